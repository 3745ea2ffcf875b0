"""What one successful gateway call produced."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Completion:
    """An assembled reply: the stream reached its end with a finish reason."""

    content: str | None
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None
    reasoning_content: str | None
    usage: dict[str, Any] | None
    first_token_at: datetime | None
    request_id: str | None
    http_status: int = 200
    # Which ezrouter surface answered, and (Anthropic surface) the reply's thinking blocks
    # with their signatures, which the next turn must send back unchanged.
    surface: str = "openai"
    thinking_blocks: list[dict[str, Any]] | None = None

    def reply_message(self) -> dict[str, Any]:
        """The reply as an OpenAI-shaped assistant message, as the history stores it."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.thinking_blocks:
            message["thinking_blocks"] = self.thinking_blocks
        elif self.reasoning_content:
            # An OpenAI-surface reply's thinking text (paid for as reasoning tokens). An
            # Anthropic-surface reply's is in its thinking blocks already: not kept twice.
            message["reasoning_content"] = self.reasoning_content
        return message
