"""Checking a completion request at the door: every error names the field at fault."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from service import constants as c
from service.config import get_settings
from service.errors import InvalidRequest
from service.webhooks.urls import check_callback_url

Role = Literal["system", "user", "assistant", "tool"]
Number = Annotated[float, Field(strict=False)]


class ChatMessage(BaseModel):
    """One message in OpenAI's chat shape, as ezrouter documents it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Role
    content: StrictStr | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _shape_per_role(self) -> ChatMessage:
        if self.role in ("system", "user", "tool") and self.content is None:
            raise ValueError(f"a {self.role} message needs a string 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("only tool messages carry 'tool_call_id'")
        if self.role != "assistant" and self.tool_calls is not None:
            raise ValueError("only assistant messages carry 'tool_calls'")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CompletionParams(BaseModel):
    """Sampling and tool parameters forwarded to the gateway.

    Unknown names are refused rather than forwarded blindly: a typo would otherwise be
    billed as a request that silently ignored it.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    seed: StrictInt | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: Literal["low", "medium", "high", "max", "xhigh"] | None = None
    thinking: dict[str, Any] | None = None
    user_id: StrictStr | None = None

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") not in ("text", "json_object", "json_schema"):
            raise ValueError("'type' must be 'text', 'json_object' or 'json_schema'")
        return value

    @field_validator("tools")
    @classmethod
    def _tool_shape(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(value or []):
            function = tool.get("function")
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise ValueError(f"tool {i} must be {{'type': 'function', 'function': {{...}}}}")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise ValueError(f"tool {i} needs a function 'name'")
        return value


class CompletionRequest(BaseModel):
    """A validated request: what a job row stores and the worker sends."""

    model_config = ConfigDict(frozen=True)

    model: str
    messages: tuple[dict[str, Any], ...]
    params: dict[str, Any]
    conversation_id: uuid.UUID | None
    tenant: str | None
    metadata: dict[str, Any]
    idempotency_key: str | None
    callback_url: str | None = None

    def fingerprint(self) -> str:
        """A hash of what the caller asked for, to tell a retry from a different request."""
        payload = {
            "model": self.model,
            "messages": list(self.messages),
            "params": self.params,
            "conversation_id": str(self.conversation_id) if self.conversation_id else None,
            "metadata": self.metadata,
            "callback_url": self.callback_url,
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_shape_per_role()]",) or "[" in str(part):
            continue
        else:
            out += f".{part}"
    return out


def _first_error(prefix: str, error: ValidationError) -> InvalidRequest:
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "is not a known field"
    return InvalidRequest(_path(prefix, tuple(first["loc"])), message)


def _text(field: str, value: object, limit: int, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(field, "is required")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidRequest(field, "must not be empty")
    if len(value) > limit:
        raise InvalidRequest(field, f"is {len(value)} characters; the limit is {limit}")
    return value


def _messages(value: object) -> tuple[dict[str, Any], ...]:
    if value is None:
        raise InvalidRequest("messages", "is required")
    if not isinstance(value, list | tuple):
        raise InvalidRequest("messages", f"must be a list of messages, not {type(value).__name__}")
    if not value:
        raise InvalidRequest("messages", "must hold at least one message")
    if len(value) > c.MAX_MESSAGES:
        raise InvalidRequest(
            "messages", f"holds {len(value)} messages; the limit is {c.MAX_MESSAGES}"
        )
    out = []
    for i, raw in enumerate(value):
        if not isinstance(raw, dict):
            raise InvalidRequest(f"messages[{i}]", f"must be an object, not {type(raw).__name__}")
        if "role" not in raw:
            raise InvalidRequest(f"messages[{i}].role", "is required")
        try:
            out.append(ChatMessage.model_validate(raw).as_dict())
        except ValidationError as exc:
            raise _first_error(f"messages[{i}]", exc) from None
    return tuple(out)


def _params(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("params", f"must be an object, not {type(value).__name__}")
    try:
        parsed = CompletionParams.model_validate(value)
    except ValidationError as exc:
        raise _first_error("params", exc) from None
    return parsed.model_dump(exclude_none=True)


def _metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata", f"must be an object, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidRequest("metadata", "keys must be strings")
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("metadata", f"must be JSON-serialisable ({exc})") from None
    if size > c.MAX_METADATA_BYTES:
        raise InvalidRequest("metadata", f"is {size} bytes; the limit is {c.MAX_METADATA_BYTES}")
    return dict(value)


def _uuid(field: str, value: object) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a UUID string, not {type(value).__name__}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest(field, f"{value!r} is not a UUID") from None


def validate_request(
    *,
    model: object,
    messages: object,
    conversation_id: object = None,
    params: object = None,
    tenant: object = None,
    metadata: object = None,
    idempotency_key: object = None,
    callback_url: object = None,
    max_request_bytes: int = c.MAX_REQUEST_BYTES,
) -> CompletionRequest:
    """Check every field and return the normalised request, or raise InvalidRequest."""
    checked_model = _text("model", model, c.MAX_MODEL_LENGTH, required=True)
    assert checked_model is not None
    checked_messages = _messages(messages)
    checked_params = _params(params)
    request = CompletionRequest(
        model=checked_model,
        messages=checked_messages,
        params=checked_params,
        conversation_id=_uuid("conversation_id", conversation_id),
        tenant=_text("tenant", tenant, c.MAX_TENANT_LENGTH, required=False),
        metadata=_metadata(metadata),
        idempotency_key=_text(
            "idempotency_key", idempotency_key, c.MAX_IDEMPOTENCY_KEY_LENGTH, required=False
        ),
        callback_url=_callback_url(callback_url),
    )
    for field, value in (
        ("model", request.model),
        ("messages", request.messages),
        ("params", request.params),
        ("tenant", request.tenant),
        ("metadata", request.metadata),
        ("idempotency_key", request.idempotency_key),
    ):
        _storable(field, value)
    size = len(json.dumps([checked_messages, checked_params], ensure_ascii=False).encode())
    if size > max_request_bytes:
        raise InvalidRequest(
            "messages", f"request is {size} bytes; the limit is {max_request_bytes} bytes"
        )
    return request


def _storable(field: str, value: object) -> None:
    """Refuse what Postgres cannot store: NUL characters in text, NaN or Infinity in JSON."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(field, "must not contain NUL (\\u0000) characters")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidRequest(field, "must not contain NaN or Infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(f"{field}.{key}", key)
            _storable(f"{field}.{key}", item)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _storable(f"{field}[{i}]", item)


def _callback_url(value: object) -> str | None:
    # Syntax only: the address is checked at delivery, on the address actually connected to.
    if value is None:
        return None
    url = check_callback_url(value)
    if not get_settings().webhook_signing_secrets():
        raise InvalidRequest(
            "callback_url", "WEBHOOK_SECRET is not set, and ezq never sends unsigned webhooks"
        )
    return url
