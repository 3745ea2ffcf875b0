"""The OpenAI Chat Completions shapes ezq accepts, checked one piece at a time.

Each piece (a content part, a tool call, a tool definition, a response format) is a
small strict model; unknown fields are refused. Callers validate the piece with
``check`` or ``check_tagged`` and get an ``InvalidRequest`` naming the exact path
(``messages[0].content[1].image_url.url``). What was sent is kept as sent: the models
only check, the caller stores the original dict.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from service.errors import InvalidRequest

NonEmpty = Annotated[StrictStr, Field(min_length=1)]
# OpenAI's rule for function and schema names.
Name = Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CacheControl(_Strict):
    """An Anthropic prompt-cache breakpoint, carried on a part or a tool (``ephemeral``)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr
    cache_control: CacheControl | None = None


class ImageURL(_Strict):
    url: NonEmpty
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL
    cache_control: CacheControl | None = None


class InputAudio(_Strict):
    data: NonEmpty
    format: Literal["wav", "mp3"]


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Strict):
    file_data: NonEmpty | None = None
    file_id: NonEmpty | None = None
    filename: NonEmpty | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FileRef:
        if (self.file_data is None) == (self.file_id is None):
            raise ValueError("needs exactly one of 'file_data' or 'file_id'")
        return self


class FilePart(_Strict):
    type: Literal["file"]
    file: FileRef
    cache_control: CacheControl | None = None


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: StrictStr


PART_MODELS: dict[str, type[BaseModel]] = {
    "text": TextPart,
    "image_url": ImagePart,
    "input_audio": AudioPart,
    "file": FilePart,
    "refusal": RefusalPart,
}

# Which part types each role may send (as in OpenAI's API reference).
PARTS_BY_ROLE: dict[str, tuple[str, ...]] = {
    "system": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}


class FunctionCall(_Strict):
    name: NonEmpty
    arguments: StrictStr


class ToolCall(_Strict):
    id: NonEmpty
    type: Literal["function"]
    function: FunctionCall


class ThinkingBlock(_Strict):
    """An Anthropic thinking block, kept with its signature so the next turn can send it back."""

    type: Literal["thinking"]
    thinking: StrictStr
    signature: StrictStr


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: StrictStr


THINKING_MODELS: dict[str, type[BaseModel]] = {
    "thinking": ThinkingBlock,
    "redacted_thinking": RedactedThinkingBlock,
}


class FunctionDefinition(_Strict):
    name: Name
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition
    cache_control: CacheControl | None = None


class NamedFunction(_Strict):
    name: NonEmpty


class ToolChoiceFunction(_Strict):
    type: Literal["function"]
    function: NamedFunction


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    name: Name
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


FORMAT_MODELS: dict[str, type[BaseModel]] = {
    "text": TextFormat,
    "json_object": JsonObjectFormat,
    "json_schema": JsonSchemaFormat,
}


class Thinking(_Strict):
    """ezrouter's ``thinking`` switch; ``budget_tokens`` as Anthropic defines it."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[StrictInt, Field(ge=1024)] | None = None


# --- error paths ---------------------------------------------------------------------

_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def path(prefix: str, loc: tuple[int | str, ...]) -> str:
    """``prefix`` followed by pydantic's location, as ``a.b[0].c``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or "(" in str(part) or part in _UNION_TAGS:
            continue  # validator and union-member tags, not field names
        else:
            out += f".{part}"
    return out


def first_error(prefix: str, error: ValidationError) -> InvalidRequest:
    """The first problem pydantic found, as an InvalidRequest naming its path; an unknown
    field first, if any: a misspelt required field is both unknown and missing, and its
    misspelling is what the caller must see (``function.nmae``, not ``function.name``)."""
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "is not a known field"
    return InvalidRequest(path(prefix, tuple(first["loc"])), message)


def check(prefix: str, model: type[BaseModel], value: object) -> BaseModel:
    """``value`` validated as ``model``, or InvalidRequest naming the field at fault."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise first_error(prefix, exc) from None


def check_tagged(
    prefix: str, value: object, models: dict[str, type[BaseModel]], allowed: tuple[str, ...]
) -> BaseModel:
    """An object whose ``type`` picks its model among ``allowed``."""
    if not isinstance(value, dict):
        raise InvalidRequest(prefix, f"must be an object, not {type(value).__name__}")
    kind = value.get("type")
    if kind not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        where = f"{kind!r} is not allowed here" if kind in models else f"unknown type {kind!r}"
        raise InvalidRequest(f"{prefix}.type", f"{where}; expected one of {shown}")
    return check(prefix, models[str(kind)], value)


def check_list(prefix: str, value: object, *, max_items: int | None = None) -> list[Any]:
    """A non-empty JSON array."""
    if not isinstance(value, list | tuple):
        raise InvalidRequest(prefix, f"must be an array, not {type(value).__name__}")
    if not value:
        raise InvalidRequest(prefix, "must not be an empty array")
    if max_items is not None and len(value) > max_items:
        raise InvalidRequest(prefix, f"holds {len(value)} items; the limit is {max_items}")
    return list(value)
