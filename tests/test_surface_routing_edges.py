"""Edges of surface routing: what the Anthropic surface cannot carry, in the request or in
the conversation's history, and what does not count.

The rules are pure (``service.gateway.routing``) and tested as such; the history check,
the neutral values and the GW-001 advice are also followed end to end through the real
worker and the fake gateway.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service import InvalidRequest, enqueue_completion
from service.completion import Completion
from service.errors import GatewayToolCallsMissing
from service.gateway.checks import check_reply
from service.gateway.routing import anthropic_problem, choose_surface
from service.validation import validate_request
from tests.conftest import sql, wait_for_job
from tests.test_surfaces import CHAT_PATH, MESSAGES_PATH, WEATHER, attempts, sent_with

USER = [{"role": "user", "content": "hi"}]
THINKING = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 4000}
ADAPTIVE = {"thinking": {"type": "adaptive"}}


# -- thinking: what the Anthropic API refuses beside it ----------------------------------

THINKING_WITH = "must be 1 (or unset) with thinking on the anthropic surface"
ALLOWED_WITH_THINKING = [
    {"temperature": 1},
    {"temperature": 1.0},
    {"top_p": 0.95},
    {"top_p": 1},
    {"tools": [WEATHER], "tool_choice": "auto"},
    {"tools": [WEATHER], "tool_choice": "none"},
]


@pytest.mark.parametrize("thinking", [THINKING, ADAPTIVE], ids=["enabled", "adaptive"])
@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        ({"temperature": 0.5}, "params.temperature", THINKING_WITH),
        ({"temperature": 0}, "params.temperature", THINKING_WITH),
        (
            {"top_p": 0.9},
            "params.top_p",
            "must be at least 0.95 (or unset) with thinking on the anthropic surface",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required"},
            "params.tool_choice",
            "cannot force a tool with thinking on the anthropic surface (only 'auto' or 'none')",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            "params.tool_choice",
            "cannot force a tool with thinking on the anthropic surface (only 'auto' or 'none')",
        ),
    ],
)
def test_thinking_refuses_sampling_changes_and_forced_tools(
    thinking: dict[str, Any], extra: dict[str, Any], path: str, reason: str
) -> None:
    """With thinking on, a temperature other than 1, top_p below 0.95 or a forced tool is a
    problem: auto keeps the request on the OpenAI surface, and naming anthropic is refused
    at enqueue naming the field. What the Anthropic API allows beside thinking (temperature
    1, top_p from 0.95, tool_choice auto or none), and all of it without thinking, is not."""
    for allowed in ALLOWED_WITH_THINKING:
        assert anthropic_problem(USER, {**thinking, **allowed}) is None, allowed
        assert choose_surface("auto", "claude-sonnet-4-6", USER, {**thinking, **allowed}) == (
            "anthropic"
        )
    unthinking = {**extra, "tools": [WEATHER], "thinking": {"type": "disabled"}}
    assert choose_surface("auto", "claude-sonnet-4-6", USER, unthinking) == "anthropic"
    params = {**thinking, **extra}
    assert anthropic_problem(USER, params) == (path, reason)
    assert choose_surface("auto", "claude-sonnet-4-6", USER, {**params, "tools": [WEATHER]}) == (
        "openai"
    )
    with pytest.raises(InvalidRequest) as caught:
        validate_request(
            model="claude-sonnet-4-6", messages=USER, params=params, surface="anthropic"
        )
    assert (caught.value.field, caught.value.reason) == (path, reason)


# -- values that change nothing ----------------------------------------------------------

NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": False, "logit_bias": {}}


# Values of the same fields that change the reply (and any seed).
COUNTING = {
    "frequency_penalty": 0.1,
    "presence_penalty": -1,
    "logprobs": True,
    "logit_bias": {"13": 0},
    "seed": 0,
}


@pytest.mark.parametrize(("name", "value"), list(NEUTRAL.items()))
def test_neutral_values_do_not_keep_a_request_off_the_anthropic_surface(
    name: str, value: Any
) -> None:
    """A penalty of 0, logprobs false or an empty logit_bias changes nothing: auto still
    sends claude tools to the Anthropic surface, and naming anthropic is accepted. Any
    other value of these fields, and any seed, still keeps it on the OpenAI surface."""
    for counted, other in COUNTING.items():
        params = {"tools": [WEATHER], counted: other}
        where = (f"params.{counted}", "has no equivalent on the anthropic surface")
        assert anthropic_problem(USER, params) == where
        assert choose_surface("auto", "claude-sonnet-4-6", USER, params) == "openai"
    params = {"tools": [WEATHER], name: value}
    assert anthropic_problem(USER, params) is None
    assert choose_surface("auto", "claude-sonnet-4-6", USER, params) == "anthropic"
    request = validate_request(
        model="claude-sonnet-4-6", messages=USER, params=params, surface="anthropic"
    )
    assert request.params[name] == value


# -- image types -------------------------------------------------------------------------

ANTHROPIC_IMAGES = [
    "data:image/jpeg;base64,/9j/4AAQ",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:image/gif;base64,R0lGODlh",
    "data:image/webp;base64,UklGRg==",
    "https://example.com/a.svg",
]


@pytest.mark.parametrize(
    "media", ["image/svg+xml", "image/bmp", "image/tiff", "image/jpg", "image/PNG"]
)
def test_base64_images_of_other_types_are_refused_for_anthropic(media: str) -> None:
    """Anthropic takes base64 images as image/jpeg, png, gif or webp only (and URLs)."""
    for url in ANTHROPIC_IMAGES:
        part = {"type": "image_url", "image_url": {"url": url}}
        assert anthropic_problem([{"role": "user", "content": [part]}], {}) is None, url
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": f"data:{media};base64,PHN2Zz4="}},
            ],
        }
    ]
    path, reason = anthropic_problem(messages, {}) or ("", "")
    assert path == "messages[0].content[1].image_url.url"
    assert reason == (
        f"is a {media} image; the anthropic surface takes base64 images only as "
        "image/jpeg, image/png, image/gif, image/webp"
    )
    with pytest.raises(InvalidRequest) as caught:
        validate_request(model="claude-sonnet-4-6", messages=messages, surface="anthropic")
    assert caught.value.field == path
    cached = [{**messages[0], "content": [{**messages[0]["content"][1], "cache_control": {}}]}]
    assert choose_surface("auto", "claude-sonnet-4-6", cached, {}) == "openai"


# -- numbers are numbers -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize(
    ("value", "kind"), [(True, "bool"), (False, "bool"), ("0.5", "str"), ("1", "str")]
)
def test_a_boolean_or_a_string_is_not_a_number(name: str, value: Any, kind: str) -> None:
    """A boolean or a string where a number is expected is refused, naming the field,
    rather than read as 1.0 or 0.5; an int is a number (stored as the float it is)."""
    request = validate_request(model="m", messages=USER, params={name: 1})
    assert request.params == {name: 1.0}
    with pytest.raises(InvalidRequest) as caught:
        validate_request(model="m", messages=USER, params={name: value})
    assert (caught.value.field, caught.value.reason) == (
        f"params.{name}",
        f"must be a number, not {kind}",
    )


# -- GW-001's advice ---------------------------------------------------------------------


def gw001(surface: str) -> Completion:
    return Completion(
        content=None,
        finish_reason="tool_calls",
        tool_calls=None,
        reasoning_content=None,
        usage=None,
        first_token_at=None,
        request_id="r",
        surface=surface,
    )


def test_gw001_on_the_anthropic_surface_does_not_advise_the_anthropic_surface() -> None:
    """A tool_calls finish without a tool call on the Anthropic surface says so, and does
    not send the caller to the surface it ran on."""
    params = {"tools": [WEATHER]}
    with pytest.raises(GatewayToolCallsMissing) as caught:
        check_reply(
            gw001("anthropic"), params, requested="auto", model="claude-sonnet-4-6", messages=USER
        )
    assert caught.value.message == (
        'finish_reason "tool_calls" but no tool call was sent (on the anthropic surface)'
    )


def test_gw001_on_a_named_openai_surface_says_why_anthropic_cannot_take_it() -> None:
    """A job set to openai is told the anthropic surface only when it could take it."""
    free = {"tools": [WEATHER]}
    with pytest.raises(GatewayToolCallsMissing) as caught:
        check_reply(gw001("openai"), free, requested="openai", model="glm-5.1", messages=USER)
    assert "which this job is set to; use the anthropic surface or claude-opus-4-7" in (
        caught.value.message
    )
    bound = {"tools": [WEATHER], "seed": 7}
    with pytest.raises(GatewayToolCallsMissing) as caught:
        check_reply(gw001("openai"), bound, requested="openai", model="glm-5.1", messages=USER)
    assert caught.value.message.endswith(
        "the anthropic surface cannot take this request (params.seed: has no equivalent on "
        "the anthropic surface); use claude-opus-4-7 for tool calls)"
    )


@pytest.mark.usefixtures("worker")
def test_gw001_names_the_field_that_kept_auto_on_the_openai_surface(fake_gateway: Any) -> None:
    """Under auto, claude tools with a seed stay on the OpenAI surface and meet GW-001;
    the error names the seed as the reason, rather than advising the anthropic surface
    as if it had been a choice."""
    marker = uuid.uuid4().hex
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6",
            [{"role": "user", "content": marker}],
            params={"tools": [WEATHER], "seed": 7},
        )
    )
    assert job["status"] == "failed" and job["error"]["type"] == "gateway_tool_calls_missing"
    assert [r.path for r in sent_with(fake_gateway, marker)] == [CHAT_PATH]
    assert job["error"]["message"] == (
        'finish_reason "tool_calls" but no tool call was sent (ezrouter GW-001 on the openai '
        "surface, where params.seed kept this job (has no equivalent on the anthropic "
        "surface); without it auto sends claude tool calls to the anthropic surface; or use "
        "claude-opus-4-7)"
    )


# -- end to end: neutral values reach the Anthropic surface, without being sent ----------


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("surface", ["auto", "anthropic"])
def test_neutral_values_let_claude_tools_run_on_the_anthropic_surface(
    fake_gateway: Any, surface: str
) -> None:
    """claude tools with zero penalties, logprobs false and an empty logit_bias run on the
    Anthropic surface (auto picks it, naming it is accepted), which never sends them."""
    marker = uuid.uuid4().hex
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6",
            [{"role": "user", "content": f"weather in Paris {marker}"}],
            params={"tools": [WEATHER], **NEUTRAL},
            surface=surface,
        )
    )
    assert job["status"] == "succeeded", job
    assert job["finish_reason"] == "tool_calls" and job["tool_calls"]
    (sent,) = sent_with(fake_gateway, marker)
    assert sent.path == MESSAGES_PATH
    assert not set(NEUTRAL) & set(sent.body), sent.body
    assert attempts(job["job_id"]) == [(1, "anthropic", 200, None, None)]


# -- end to end: the conversation's history on a job set to anthropic --------------------

AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
FILE_ID = {"type": "file", "file": {"file_id": "file-abc123"}}


def first_turn_on_openai(marker: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A conversation whose first turn (on the OpenAI surface) holds ``parts``."""
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6",
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": f"hear {marker}"}, *parts]},
            ],
            surface="openai",
        )
    )
    assert job["status"] == "succeeded", job
    return job


HISTORY_CASES = [
    pytest.param(
        [AUDIO, FILE_ID],
        "messages[1].content[1]",
        "audio input has no equivalent on the anthropic surface",
        id="audio",
    ),
    pytest.param(
        [FILE_ID],
        "messages[1].content[1].file",
        "the anthropic surface takes files only as base64 data URLs of application/pdf or "
        "text/plain",
        id="file_id",
    ),
]


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(("parts", "path", "reason"), HISTORY_CASES)
def test_a_history_the_anthropic_surface_cannot_carry_fails_the_job_before_any_call(
    service_env: dict[str, str],
    fake_gateway: Any,
    parts: list[dict[str, Any]],
    path: str,
    reason: str,
) -> None:
    """A next turn set to anthropic whose stored history holds audio or a file_id part
    (here from a producer that writes jobs itself: a Celery message) fails at once with a
    permanent error naming the history's part, and nothing is sent to the gateway."""
    from celery import Celery

    from tests.conftest import REDIS_URL

    marker, second = uuid.uuid4().hex, uuid.uuid4().hex
    first = first_turn_on_openai(marker, parts)
    app = Celery("other-service", broker=REDIS_URL, backend=REDIS_URL)
    try:
        result = app.send_task(
            "ezq.chat_completion",
            kwargs={
                "model": "claude-sonnet-4-6",
                "messages": [{"role": "user", "content": f"and? {second}"}],
                "conversation_id": str(first["conversation_id"]),
                "surface": "anthropic",
            },
            queue=service_env["EZQ_QUEUE"],
        )
        result.get(timeout=30, propagate=False)
        job_id = result.id
    finally:
        app.close()
    job = wait_for_job(job_id)
    assert job["status"] == "failed" and job["surface"] == "anthropic", job
    assert job["error"] == {
        "type": "client_error",
        "status": None,
        "message": f"{path}: {reason} (in the conversation's history); the job is set to "
        "the anthropic surface, so nothing was sent",
    }
    assert attempts(job_id) == [(1, None, None, "client_error", False)]
    assert sent_with(fake_gateway, second) == []
    assert len(sent_with(fake_gateway, marker)) == 1, "the first turn's call only"


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(("parts", "path", "reason"), HISTORY_CASES)
def test_a_history_the_anthropic_surface_cannot_carry_is_refused_at_enqueue(
    fake_gateway: Any, parts: list[dict[str, Any]], path: str, reason: str
) -> None:
    """enqueue_completion refuses such a next turn (field ``surface``, naming the history's
    part) and writes nothing; on auto the same turn runs on the OpenAI surface. A history
    of PNG and PDF parts continues on a named anthropic surface."""
    carried = uuid.uuid4().hex
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}}
    png = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    fine = first_turn_on_openai(carried, [png, pdf])
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6",
            [{"role": "user", "content": "and?"}],
            conversation_id=fine["conversation_id"],
            surface="anthropic",
        )
    )
    assert job["status"] == "succeeded", job
    assert [r.path for r in sent_with(fake_gateway, carried)] == [CHAT_PATH, MESSAGES_PATH]

    marker = uuid.uuid4().hex
    first = first_turn_on_openai(marker, parts)
    conversation = first["conversation_id"]
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion(
            "claude-sonnet-4-6",
            [{"role": "user", "content": "and?"}],
            conversation_id=conversation,
            surface="anthropic",
        )
    assert (caught.value.field, caught.value.reason) == (
        "surface",
        f"anthropic cannot carry the conversation's history ({path}: {reason})",
    )
    assert sql("SELECT count(*) FROM jobs WHERE conversation_id = :c", c=conversation) == [(1,)]
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6", [{"role": "user", "content": "and?"}], conversation_id=conversation
        )
    )
    assert job["status"] == "succeeded", job
    assert [r.path for r in sent_with(fake_gateway, marker)] == [CHAT_PATH, CHAT_PATH]
