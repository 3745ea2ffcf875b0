"""The gateway client: routes each call to one of ezrouter's two surfaces.

The request and the reply are OpenAI-shaped on both; which surface a call takes is
decided per call by ``routing.choose_surface`` from the job's ``surface``. A reply that
finished but cannot be used (GW-001, a strict schema not met) is refused here, whatever
the surface, and every error says which surface it came from.

Calls run on the process's gateway loop (``service.gateway.loop``) with the SDKs' async
clients; ``complete`` is called from worker threads and blocks its caller until its call
ends.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Protocol

from service import constants as c
from service.completion import Completion
from service.config import Settings
from service.errors import GatewayConnectionError, GatewayError
from service.gateway.anthropic_client import AnthropicSurface
from service.gateway.checks import check_reply
from service.gateway.loop import LoopThread
from service.gateway.openai_client import OpenAISurface
from service.gateway.routing import choose_surface
from service.gateway.translate import translate

__all__ = ["GatewayClient", "translate"]


class Surface(Protocol):
    async def close(self) -> None: ...

    async def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion: ...


class GatewayClient:
    """One per process, shared by the worker's threads; its calls run on its own loop."""

    def __init__(self, settings: Settings) -> None:
        self._loop = LoopThread()
        self._surfaces: dict[str, Surface] = {
            "openai": OpenAISurface(settings),
            "anthropic": AnthropicSurface(settings),
        }

    def close(self) -> None:
        """Close the connections and stop the loop (calls still running are interrupted)."""
        self._loop.close(self._close_surfaces())

    async def _close_surfaces(self) -> None:
        for surface in self._surfaces.values():
            await surface.close()

    def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        surface: str = c.DEFAULT_SURFACE,
    ) -> Completion:
        """One attempt on the chosen surface: a usable completion, or a GatewayError."""
        chosen = choose_surface(surface, model, messages, params)
        try:
            completion = self._loop.run(self._surfaces[chosen].complete(model, messages, params))
            check_reply(completion, params)
        except GatewayError as error:
            error.surface = chosen
            raise
        except concurrent.futures.CancelledError:
            # The process is shutting down with this call still running: retry it later.
            interrupted = GatewayConnectionError(
                "the call was interrupted: the worker is shutting down"
            )
            interrupted.surface = chosen
            raise interrupted from None
        return completion
