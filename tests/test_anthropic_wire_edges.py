"""Edges of the OpenAI → Anthropic Messages translation: plain-text files, parts with no
Anthropic form, empty content, tool_choice without tools and adaptive thinking.

The translation is pure, so most tests read ``to_anthropic``'s body; the last ones run
through the real worker and the fake gateway and assert what the gateway received.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from service import enqueue_completion
from service.errors import PermanentGatewayError
from service.gateway.anthropic_wire import to_anthropic
from service.gateway.retry import is_retryable
from tests.conftest import sql, wait_for_job

MODEL = "claude-sonnet-4-6"
MESSAGES_PATH = "/anthropic/v1/messages"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
SIGNED = [{"type": "thinking", "thinking": "t", "signature": "sig"}]


def data_url(media: str, payload: bytes) -> str:
    return f"data:{media};base64,{base64.b64encode(payload).decode()}"


def file_part(file: dict[str, Any]) -> dict[str, Any]:
    return {"type": "file", "file": file}


def with_parts(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    """One user message: a text part, then ``parts`` (so they sit at content[1:])."""
    return [{"role": "user", "content": [{"type": "text", "text": "read"}, *parts]}]


def turns(messages: list[dict[str, Any]], **params: Any) -> list[dict[str, Any]]:
    turns_sent: list[dict[str, Any]] = to_anthropic(MODEL, messages, params)["messages"]
    return turns_sent


# --- file parts ---------------------------------------------------------------------


def test_plain_text_file_is_sent_decoded_and_a_pdf_stays_base64() -> None:
    """text/plain goes as a text source holding the decoded text (UTF-8 kept); only a PDF
    takes a base64 source."""
    text = "héllo\nwörld"
    messages = with_parts(
        file_part({"file_data": data_url("text/plain", text.encode()), "filename": "a.txt"}),
        {**file_part({"file_data": "data:application/pdf;base64,JVBE"}), "cache_control": {}},
    )
    (user,) = turns(messages)
    assert user["content"][1:] == [
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": text},
            "title": "a.txt",
        },
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "cache_control": {},
        },
    ]


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        ({"file_data": "data:text/plain;base64,not base64!"}, "not valid base64"),
        ({"file_data": data_url("text/plain", b"\xff\xfe bad")}, "not UTF-8"),
        ({"file_id": "file-abc"}, "file_id"),
        ({"file_data": data_url("image/png", b"png")}, "application/pdf or text/plain"),
        ({"file_data": "JVBERi0xLjQ="}, "base64 data URL"),
    ],
    ids=["bad_base64", "not_utf8", "file_id_only", "other_media_type", "not_a_data_url"],
)
def test_a_file_part_with_no_anthropic_form_fails_permanently_naming_it(
    file: dict[str, Any], reason: str
) -> None:
    """A file the Anthropic surface cannot carry is a permanent error naming the message and
    part, never a KeyError or a body the API refuses: no attempt is wasted on it."""
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(PermanentGatewayError) as caught:
        to_anthropic(MODEL, [*history, *with_parts(file_part(file))], {})
    error = caught.value
    assert not is_retryable(error)
    assert error.status is None, "nothing was sent"
    assert error.describe().startswith("messages[2].content[1]: ")
    assert reason in error.describe()


def test_an_audio_part_fails_rather_than_being_dropped() -> None:
    """A part kind with no Anthropic block is refused, not silently left out."""
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    with pytest.raises(PermanentGatewayError) as caught:
        to_anthropic(MODEL, with_parts(audio), {})
    assert caught.value.describe().startswith("messages[0].content[1]: ")


# --- empty content ------------------------------------------------------------------


def test_empty_text_is_left_out_and_an_empty_assistant_reply_too() -> None:
    """Empty text blocks are dropped; an assistant message with nothing in it is left out,
    so the user turns around it merge and the turns still alternate."""
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "a"}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": ""}]},
        {"role": "user", "content": "c"},
    ]
    body = to_anthropic(MODEL, messages, {})
    assert "system" not in body
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
                {"type": "text", "text": "c"},
            ],
        }
    ]


def test_an_assistant_refusal_is_what_it_said() -> None:
    """An assistant message holding only ``refusal`` sends the refusal as its text."""
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "user", "content": "b"},
    ]
    assert turns(messages)[1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "I can't help with that."}],
    }


def test_thinking_and_tool_use_keep_an_empty_assistant_message() -> None:
    """An assistant message with empty text but thinking blocks or tool calls is kept with
    them; an empty tool result keeps its tool_result block, without empty content, and an
    empty user message after it shares its turn (the tool_result is never dropped)."""
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "", "thinking_blocks": SIGNED},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": ""},
        {"role": "user", "content": ""},
    ]
    sent = turns(messages, tools=[TOOL])
    assert [t["role"] for t in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[1]["content"] == SIGNED
    assert sent[3]["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]
    assert sent[4]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_1"}]


@pytest.mark.parametrize(
    "messages",
    [
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": [{"type": "text", "text": ""}]},
        ],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "c"},
        ],
    ],
    ids=["last", "between_replies"],
)
def test_an_empty_user_turn_fails_naming_the_message(messages: list[dict[str, Any]]) -> None:
    """A user turn with nothing to send is a permanent error naming it: dropping it would
    turn the last reply into a prefill, or merge two replies."""
    with pytest.raises(PermanentGatewayError) as caught:
        to_anthropic(MODEL, messages, {})
    assert not is_retryable(caught.value)
    assert caught.value.describe().startswith("messages[2].content: ")


# --- request fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{"parallel_tool_calls": False}, {"tool_choice": "auto"}, {"tools": [], "tool_choice": "none"}],
)
def test_no_tool_choice_without_tools(params: dict[str, Any]) -> None:
    """Without tools there is nothing to choose: no tool_choice is sent."""
    body = to_anthropic(MODEL, [{"role": "user", "content": "x"}], params)
    assert "tool_choice" not in body and "tools" not in body


def test_adaptive_thinking_is_sent_without_a_budget() -> None:
    """Adaptive thinking takes only its type; max_tokens is the request's own."""
    params = {"thinking": {"type": "adaptive", "budget_tokens": 3000}, "max_tokens": 5000}
    body = to_anthropic("claude-opus-4-7", [{"role": "user", "content": "x"}], params)
    assert body["thinking"] == {"type": "adaptive"}
    assert body["max_tokens"] == 5000


# --- end to end: the real worker and the fake gateway ---------------------------------


def sent_with(fake_gateway: Any, marker: str) -> list[Any]:
    return [r for r in fake_gateway.requests if marker in r.raw.decode()]


@pytest.mark.usefixtures("worker")
def test_plain_text_file_reaches_the_gateway_decoded(fake_gateway: Any) -> None:
    """A text/plain file on the Anthropic surface arrives as a text document source, and
    an empty assistant reply in the history is left out."""
    marker = uuid.uuid4().hex
    text = f"notes {marker}"
    messages = [
        {"role": "user", "content": f"first {marker}"},
        {"role": "assistant", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "summarise"},
                file_part({"file_data": data_url("text/plain", text.encode()), "filename": "n"}),
            ],
        },
    ]
    job = wait_for_job(enqueue_completion(MODEL, messages, surface="anthropic"))

    assert job["status"] == "succeeded", job
    (sent,) = sent_with(fake_gateway, marker)
    assert sent.path == MESSAGES_PATH
    assert sent.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"first {marker}"},
                {"type": "text", "text": "summarise"},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": text},
                    "title": "n",
                },
            ],
        }
    ]


@pytest.mark.usefixtures("worker")
def test_undecodable_text_file_fails_the_job_at_once(fake_gateway: Any) -> None:
    """base64 that does not decode passes enqueue (its media type is right) but fails the
    job on its first attempt, naming the part, without a call to the gateway."""
    marker = uuid.uuid4().hex
    bad = file_part({"file_data": f"data:text/plain;base64,{marker}!!"})
    job = wait_for_job(enqueue_completion(MODEL, with_parts(bad), surface="anthropic"))

    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["type"] == "client_error"
    assert job["error"]["message"].startswith("messages[0].content[1]: file_data is not valid")
    rows = sql(
        "SELECT surface, http_status, error_type, retryable FROM job_attempts WHERE job_id = :j",
        j=job["job_id"],
    )
    assert rows == [("anthropic", None, "client_error", False)]
    assert sent_with(fake_gateway, marker) == [], "nothing reached the gateway"
