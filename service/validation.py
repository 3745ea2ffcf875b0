"""Checking a completion request at the door: every error names the field at fault."""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import (
    BaseModel,
    BeforeValidator,
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
from service import shapes
from service.config import get_settings
from service.errors import InvalidRequest
from service.gateway.routing import anthropic_problem
from service.webhooks.urls import check_callback_url

Role = Literal["system", "user", "assistant", "tool"]


def _a_number(value: object) -> object:
    """A JSON number as given: an int is fine for a float field, a boolean or a string is
    refused rather than read as one (``true`` was sent as 1.0, ``"0.5"`` as 0.5)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"must be a number, not {type(value).__name__}")
    return value


# A finite number: NaN and infinities are refused as such (``le=2`` alone said NaN was
# "not less than or equal to 2").
Number = Annotated[float, BeforeValidator(_a_number), Field(allow_inf_nan=False)]


class ChatMessage(BaseModel):
    """One message in OpenAI's chat shape; content parts are checked by ``_content``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Role
    content: Any = None
    name: StrictStr | None = None
    tool_calls: Any = None
    tool_call_id: StrictStr | None = None
    refusal: StrictStr | None = None
    # What an Anthropic-surface reply carried, sent back on the next turn (see README).
    reasoning_content: StrictStr | None = None
    thinking_blocks: Any = None

    @model_validator(mode="after")
    def _shape_per_role(self) -> ChatMessage:
        if self.role in ("system", "user", "tool") and self.content is None:
            raise ValueError(f"a {self.role} message needs 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("only tool messages carry 'tool_call_id'")
        if self.role != "assistant" and self.tool_calls is not None:
            raise ValueError("only assistant messages carry 'tool_calls'")
        for field in ("refusal", "reasoning_content", "thinking_blocks"):
            if self.role != "assistant" and getattr(self, field) is not None:
                raise ValueError(f"only assistant messages carry {field!r}")
        if (
            self.role == "assistant"
            and self.content is None
            and not self.tool_calls
            and self.refusal is None
        ):
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self


def _content(prefix: str, role: str, content: object) -> None:
    """A string, or an array of the parts ``role`` may send."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(
            prefix, f"must be a string or an array of content parts, not {type(content).__name__}"
        )
    for j, part in enumerate(shapes.check_list(prefix, content)):
        shapes.check_tagged(f"{prefix}[{j}]", part, shapes.PART_MODELS, shapes.PARTS_BY_ROLE[role])


def _message(prefix: str, raw: dict[str, Any]) -> dict[str, Any]:
    try:
        message = ChatMessage.model_validate(raw)
    except ValidationError as exc:
        raise shapes.first_error(prefix, exc) from None
    _content(f"{prefix}.content", message.role, message.content)
    if message.tool_calls is not None:
        calls = shapes.check_list(f"{prefix}.tool_calls", message.tool_calls)
        for j, call in enumerate(calls):
            shapes.check(f"{prefix}.tool_calls[{j}]", shapes.ToolCall, call)
    if message.thinking_blocks is not None:
        blocks = shapes.check_list(f"{prefix}.thinking_blocks", message.thinking_blocks)
        for j, block in enumerate(blocks):
            where = f"{prefix}.thinking_blocks[{j}]"
            shapes.check_tagged(where, block, shapes.THINKING_MODELS, tuple(shapes.THINKING_MODELS))
    # Kept as sent, so content parts reach the gateway untouched: explicit nulls are left
    # out, except an assistant's "content": null beside its tool calls, which the
    # Chat Completions shape (and ezrouter's) has as a required, nullable field.
    return {k: v for k, v in raw.items() if v is not None or k == "content"}


class CompletionParams(BaseModel):
    """Sampling and tool parameters forwarded to the gateway.

    Unknown names are refused rather than forwarded blindly: a typo would otherwise be
    billed as a request that silently ignored it. Structured fields (tools, tool_choice,
    response_format, thinking) are checked piece by piece in ``_params``.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=4)] | None = None
    seed: StrictInt | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[StrictStr, Annotated[StrictInt, Field(ge=-100, le=100)]] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    response_format: Any = None
    reasoning_effort: Literal["low", "medium", "high", "max", "xhigh"] | None = None
    thinking: Any = None
    user: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
    user_id: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_sequences(cls, value: object) -> object:
        # Checked first to say what is wrong: as a union, a list of five (or of numbers)
        # was "Input should be a valid string", the first alternative's complaint.
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError(
                f"must be a string or a list of 1 to 4 strings, not {type(value).__name__}"
            )
        if not 1 <= len(value) <= 4:
            raise ValueError(f"holds {len(value)} sequences; give 1 to 4")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {i} must be a string, not {type(item).__name__}")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"keys are token ids (digits), not {key!r}")
        return value


def _tool_choice(value: object) -> None:
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise InvalidRequest(
                "params.tool_choice", "must be 'none', 'auto', 'required' or a function object"
            )
        return
    shapes.check("params.tool_choice", shapes.ToolChoiceFunction, value)


def _response_format(value: object) -> None:
    checked = shapes.check_tagged(
        "params.response_format", value, shapes.FORMAT_MODELS, tuple(shapes.FORMAT_MODELS)
    )
    if not isinstance(checked, shapes.JsonSchemaFormat):
        return
    field = "params.response_format.json_schema.schema"
    schema = checked.json_schema.schema_
    if schema is None:
        if checked.json_schema.strict:
            raise InvalidRequest(field, "is required when 'strict' is true")
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise InvalidRequest(field + where, f"is not a valid JSON Schema: {exc.message}") from None


def _params(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("params", f"must be an object, not {type(value).__name__}")
    try:
        parsed = CompletionParams.model_validate(value)
    except ValidationError as exc:
        raise shapes.first_error("params", exc) from None
    if parsed.top_logprobs is not None and parsed.logprobs is not True:
        raise InvalidRequest("params.top_logprobs", "needs 'logprobs': true")
    if parsed.tools is not None:
        for i, tool in enumerate(shapes.check_list("params.tools", parsed.tools, max_items=128)):
            shapes.check(f"params.tools[{i}]", shapes.Tool, tool)
    if parsed.tool_choice is not None:
        _tool_choice(parsed.tool_choice)
    if parsed.response_format is not None:
        _response_format(parsed.response_format)
    if parsed.thinking is not None:
        shapes.check("params.thinking", shapes.Thinking, parsed.thinking)
    return parsed.model_dump(exclude_none=True)


class EnqueueRequest(BaseModel):
    """A chat-completion request as a producer sends it: the HTTP body, the Celery task's
    kwargs and ``enqueue_completion``'s arguments have exactly these fields.

    ``validate_request`` checks each field with the same models (``ChatMessage``,
    ``CompletionParams``) and limits, naming the field at fault; this class is the typed
    description of the whole, from which ``/openapi.json`` describes the body.
    """

    model_config = ConfigDict(extra="forbid", title="EnqueueRequest")

    model: Annotated[str, Field(min_length=1, max_length=c.MAX_MODEL_LENGTH)] = Field(
        description="Model id, e.g. claude-sonnet-4-6."
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=c.MAX_MESSAGES)] = Field(
        description="The new messages of this turn, in OpenAI's chat shape."
    )
    conversation_id: uuid.UUID | None = Field(
        default=None, description="Continue this conversation (one of the key's tenants)."
    )
    params: CompletionParams | None = Field(
        default=None, description="Sampling and tool parameters forwarded to the gateway."
    )
    tenant: Annotated[str, Field(min_length=1, max_length=c.MAX_TENANT_LENGTH)] | None = Field(
        default=None,
        description="Tenant to attribute the job to; may be omitted with a one-tenant key.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description=f"Tags, at most {c.MAX_METADATA_BYTES} bytes of JSON."
    )
    idempotency_key: (
        Annotated[str, Field(min_length=1, max_length=c.MAX_IDEMPOTENCY_KEY_LENGTH)] | None
    ) = Field(default=None, description="Same key and request return the first job.")
    callback_url: Annotated[str, Field(max_length=c.WEBHOOK_MAX_URL_LENGTH)] | None = Field(
        default=None, description="POST a signed webhook here when the job ends."
    )
    surface: Literal["openai", "anthropic", "auto"] | None = Field(
        default=None, description="The ezrouter surface to call (default: by model)."
    )
    priority: Annotated[int, Field(ge=c.PRIORITY_MIN, le=c.PRIORITY_MAX)] | None = Field(
        default=None,
        description=f"0-9, higher runs first under a backlog (default {c.PRIORITY_DEFAULT}).",
    )


ENQUEUE_FIELDS: tuple[str, ...] = tuple(EnqueueRequest.model_fields)


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
    # The surface the job runs on (openai, anthropic or auto), and what the caller named.
    surface: str = c.DEFAULT_SURFACE
    surface_requested: str | None = None
    # Flow control only: not part of the fingerprint (the same request at another priority
    # is the same request).
    priority: int = c.PRIORITY_DEFAULT

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
        if self.surface_requested is not None:
            # Only when named, so that jobs from before the field keep their fingerprint.
            payload["surface"] = self.surface_requested
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


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
        out.append(_message(f"messages[{i}]", raw))
    return tuple(out)


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
    surface: object = None,
    priority: object = None,
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
        tenant=checked_tenant(tenant),
        metadata=_metadata(metadata),
        idempotency_key=_text(
            "idempotency_key", idempotency_key, c.MAX_IDEMPOTENCY_KEY_LENGTH, required=False
        ),
        callback_url=_callback_url(callback_url),
        surface=_surface(surface) or get_settings().default_surface(checked_model),
        surface_requested=_surface(surface),
        priority=_priority(priority),
    )
    for field, value in (
        ("model", request.model),
        ("messages", request.messages),
        ("params", request.params),
        ("tenant", request.tenant),
        ("metadata", request.metadata),
        ("idempotency_key", request.idempotency_key),
        ("callback_url", request.callback_url),
    ):
        storable(field, value)
    if request.surface == "anthropic":
        problem = anthropic_problem(list(checked_messages), checked_params)
        if problem is not None:
            raise InvalidRequest(*problem)
    size = len(json.dumps([checked_messages, checked_params], ensure_ascii=False).encode())
    if size > max_request_bytes:
        raise InvalidRequest(
            "messages", f"request is {size} bytes; the limit is {max_request_bytes} bytes"
        )
    return request


def storable(field: str, value: object) -> None:
    """Refuse what Postgres cannot store: NUL characters or lone UTF-16 surrogates in text,
    NaN or Infinity in JSON; ``field`` (and the path below it) names where."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(field, "must not contain NUL (\\u0000) characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                field, "holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode text"
            ) from None
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidRequest(field, "must not contain NaN or Infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(f"{field}.{key}", key)
            storable(f"{field}.{key}", item)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            storable(f"{field}[{i}]", item)


def _priority(value: object) -> int:
    if value is None:
        return c.PRIORITY_DEFAULT
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest("priority", f"must be an integer, not {type(value).__name__}")
    if not c.PRIORITY_MIN <= value <= c.PRIORITY_MAX:
        raise InvalidRequest(
            "priority", f"must be between {c.PRIORITY_MIN} and {c.PRIORITY_MAX}, not {value}"
        )
    return value


def _surface(value: object) -> str | None:
    if value is None:
        return None
    if value not in c.SURFACES:
        raise InvalidRequest("surface", f"must be one of {', '.join(c.SURFACES)}, not {value!r}")
    return str(value)


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


def checked_callback_url(value: object) -> str | None:
    """A callback URL as enqueue checks it: its syntax, and a WEBHOOK_SECRET to sign with."""
    return _callback_url(value)


def checked_priority(value: object, default: int) -> int:
    """A priority as enqueue checks it (0-9), ``default`` when none is given."""
    return default if value is None else _priority(value)


def checked_tenant(value: object, field: str = "tenant") -> str | None:
    """A tenant as given to ezq (a job, a key, a limit, a budget, a batch): a non-empty
    string Postgres can store, without control characters (a newline or a tab would break
    the lines of logs, tables and CSV that show it). Spaces are kept as given, at the edges
    too: keys and jobs stored before this check may hold such names, and must keep
    working."""
    tenant = _text(field, value, c.MAX_TENANT_LENGTH, required=False)
    storable(field, tenant)
    if tenant is None:
        return None
    for position, char in enumerate(tenant if not tenant.isprintable() else ""):
        if unicodedata.category(char) == "Cc":
            raise InvalidRequest(
                field, f"must not contain control characters ({char!r} at position {position})"
            )
    return tenant
