"""The gateway client: routes each call to one of ezrouter's two surfaces.

The request and the reply are OpenAI-shaped on both; which surface a call takes is
decided per call by ``routing.choose_surface`` from the job's ``surface``. A reply that
finished but cannot be used (GW-001, a strict schema not met) is refused here, whatever
the surface, and every error says which surface it came from. A job set to the Anthropic
surface whose full message list (the stored history with its new messages) holds what that
surface cannot carry fails before any call, and is not retried: the same history fails
the same way every time.
"""

from __future__ import annotations

from typing import Any, Protocol

from service import constants as c
from service.completion import Completion
from service.config import Settings
from service.errors import GatewayError, PermanentGatewayError, ReplyDefect
from service.gateway.anthropic_client import AnthropicSurface
from service.gateway.checks import check_reply
from service.gateway.openai_client import OpenAISurface
from service.gateway.routing import anthropic_problem, choose_surface
from service.gateway.translate import translate

__all__ = ["GatewayClient", "translate"]


class Surface(Protocol):
    def close(self) -> None: ...

    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion: ...


class GatewayClient:
    """One per process, shared by the worker's threads (the SDK clients are thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self._surfaces: dict[str, Surface] = {
            "openai": OpenAISurface(settings),
            "anthropic": AnthropicSurface(settings),
        }

    def close(self) -> None:
        for surface in self._surfaces.values():
            surface.close()

    def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        surface: str = c.DEFAULT_SURFACE,
    ) -> Completion:
        """One attempt on the chosen surface: a usable completion, or a GatewayError."""
        chosen = choose_surface(surface, model, messages, params)
        if surface == "anthropic":
            # Enqueue checked the job's new messages; the history it joins was not
            # (``auto`` never picks anthropic for such a list: it checked the whole list).
            refused = anthropic_refusal(messages, params)
            if refused is not None:
                raise refused
        try:
            completion = self._surfaces[chosen].complete(model, messages, params)
            try:
                check_reply(completion, params, requested=surface, model=model, messages=messages)
            except ReplyDefect as defect:
                defect.usage = completion.usage  # answered in full: paid for
                raise
        except GatewayError as error:
            error.surface = chosen
            raise
        return completion


def anthropic_refusal(
    messages: list[dict[str, Any]], params: dict[str, Any]
) -> PermanentGatewayError | None:
    """The error for a call the Anthropic surface cannot carry, or None when it can.

    Permanent (never retried) and with no surface and no status: no call is made. A part
    at fault is named by its index in the full list, history first: the job's own new
    messages were checked at enqueue, so such a part is in the conversation's history.
    """
    problem = anthropic_problem(messages, params)
    if problem is None:
        return None
    path, reason = problem
    where = " (in the conversation's history)" if path.startswith("messages[") else ""
    return PermanentGatewayError(
        f"{path}: {reason}{where}; the job is set to the anthropic surface, so nothing was sent"
    )
