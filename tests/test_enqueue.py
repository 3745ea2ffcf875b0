"""Producing jobs from Python: validation, idempotency, and nothing written on bad input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service import (
    ConversationNotFound,
    IdempotencyConflict,
    InvalidRequest,
    enqueue_completion,
)
from tests.conftest import run_ezq, sql

pytestmark = pytest.mark.usefixtures("service_env")

USER = [{"role": "user", "content": "hi"}]


def counts() -> tuple[Any, ...]:
    return sql(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM conversations),"
        " (SELECT count(*) FROM messages)"
    )[0]


BAD = [
    ({"model": None, "messages": USER}, "model"),
    ({"model": "", "messages": USER}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": None}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": [*USER, {"role": "user"}]}, "messages[1]"),
    ({"model": "m", "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    (
        {"model": "m", "messages": [{"role": "user", "content": "x", "extra": 1}]},
        "messages[0].extra",
    ),
    ({"model": "m", "messages": USER, "params": [1, 2]}, "params"),
    ({"model": "m", "messages": USER, "params": "hot"}, "params"),
    ({"model": "m", "messages": USER, "params": {"temperature": 7}}, "params.temperature"),
    ({"model": "m", "messages": USER, "params": {"max_tokens": 0}}, "params.max_tokens"),
    ({"model": "m", "messages": USER, "params": {"stream": False}}, "params.stream"),
    (
        {"model": "m", "messages": USER, "params": {"tools": [{"type": "x"}]}},
        "params.tools[0].type",
    ),
    ({"model": "m", "messages": USER, "params": {"user": 7}}, "params.user"),
    ({"model": "m", "messages": USER, "params": {"n": 2}}, "params.n"),
    ({"model": "m", "messages": USER, "params": {"colour": "red"}}, "params.colour"),
    (
        {"model": "m", "messages": USER, "params": {"response_format": {"type": "text", "x": 1}}},
        "params.response_format.x",
    ),
    (
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}],
        },
        "messages[0].content[0].x",
    ),
    ({"model": "m", "messages": USER, "params": {"logit_bias": {"1": 101}}}, "params.logit_bias.1"),
    ({"model": "m", "messages": USER, "params": {"top_logprobs": 2}}, "params.top_logprobs"),
    ({"model": "m", "messages": USER, "params": {"tool_choice": "always"}}, "params.tool_choice"),
    (
        {"model": "m", "messages": USER, "params": {"response_format": {"type": "xml"}}},
        "params.response_format.type",
    ),
    (
        {
            "model": "m",
            "messages": USER,
            "params": {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
        },
        "params.response_format.json_schema.name",
    ),
    (
        {
            "model": "m",
            "messages": USER,
            "params": {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": 5}},
                }
            },
        },
        "params.response_format.json_schema.schema.type",
    ),
    (
        {"model": "m", "messages": USER, "params": {"thinking": {"type": "on"}}},
        "params.thinking.type",
    ),
    (
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "messages[0].content[0].type",
    ),
    (
        {"model": "m", "messages": [{"role": "user", "content": []}]},
        "messages[0].content",
    ),
    (
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "x"}}]}
            ],
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        "messages[0].content[0].type",
    ),
    (
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}],
                }
            ],
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    ({"model": "m", "messages": USER, "metadata": ["a"]}, "metadata"),
    ({"model": "m", "messages": USER, "conversation_id": "not-a-uuid"}, "conversation_id"),
    ({"model": "m", "messages": USER, "tenant": 5}, "tenant"),
    ({"model": "m", "messages": [{"role": "user", "content": "x" * 1_100_000}]}, "messages"),
    ({"model": "m", "messages": USER * 1001}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
    ({"model": "m", "messages": USER, "metadata": {"score": float("nan")}}, "metadata.score"),
    (
        {"model": "m", "messages": USER, "params": {"temperature": float("inf")}},
        "params.temperature",
    ),
    ({"model": "m\x00", "messages": USER}, "model"),
]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "holds 5 sequences; give 1 to 4"),
        ({"stop": []}, "holds 0 sequences; give 1 to 4"),
        ({"stop": ["a", 1]}, "item 1 must be a string, not int"),
        ({"stop": 5}, "must be a string or a list of 1 to 4 strings, not int"),
        ({"temperature": float("nan")}, "finite number"),
        ({"top_p": float("-inf")}, "finite number"),
    ],
)
def test_bad_params_say_what_is_wrong(params: dict[str, Any], reason: str) -> None:
    """The reason says what is wrong with the value, not what another shape wanted."""
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion("m", USER, params=params)
    assert reason in caught.value.reason, caught.value.reason


@pytest.mark.parametrize(("kwargs", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_input_is_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Bad input raises InvalidRequest naming the field, and nothing is written."""
    before = counts()
    model = kwargs.pop("model")
    messages = kwargs.pop("messages")
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion(model, messages, **kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(field + ":")
    assert counts() == before


def test_a_misspelt_required_field_is_named_as_written() -> None:
    """A required field misspelt is both missing and unknown: the error names the field as
    the caller wrote it, not the one it is missing."""
    tool = {"type": "function", "function": {"nmae": "lookup", "parameters": {}}}
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion("m", USER, params={"tools": [tool]})
    assert str(caught.value) == "params.tools[0].function.nmae: is not a known field"


def test_unknown_conversation_is_refused() -> None:
    """A conversation id that does not exist is refused, nothing written."""
    before = counts()
    with pytest.raises(ConversationNotFound):
        enqueue_completion("m", USER, conversation_id=uuid.uuid4())
    assert counts() == before


@pytest.mark.parametrize("other", ["b"])
def test_conversation_of_another_tenant_is_not_found(other: str | None) -> None:
    """A turn for another tenant's conversation is refused exactly like an unknown one."""
    job_id = enqueue_completion("m", USER, tenant="a")
    (conversation_id,) = sql("SELECT conversation_id FROM jobs WHERE id = :j", j=job_id)[0]
    before = counts()
    with pytest.raises(ConversationNotFound) as refused:
        enqueue_completion("m", USER, conversation_id=conversation_id, tenant=other)
    assert str(refused.value) == f"conversation_id: no conversation {conversation_id}"
    assert counts() == before


def test_same_idempotency_key_and_request_returns_the_first_job() -> None:
    """Repeating a request with its idempotency key returns the first job's id."""
    key = uuid.uuid4().hex
    first = enqueue_completion("m", USER, tenant="t", idempotency_key=key)
    before = counts()
    again = enqueue_completion("m", USER, tenant="t", idempotency_key=key)
    assert again == first
    assert counts() == before


def test_same_idempotency_key_with_another_request_is_refused() -> None:
    """Reusing an idempotency key for a different request is an IdempotencyConflict."""
    key = uuid.uuid4().hex
    first = enqueue_completion("m", USER, idempotency_key=key)
    before = counts()
    with pytest.raises(IdempotencyConflict) as caught:
        enqueue_completion("m", [{"role": "user", "content": "other"}], idempotency_key=key)
    assert caught.value.job_id == first
    assert counts() == before


def test_idempotency_keys_are_per_tenant() -> None:
    """The same key under two tenants makes two jobs."""
    key = uuid.uuid4().hex
    assert enqueue_completion("m", USER, tenant="x", idempotency_key=key) != enqueue_completion(
        "m", USER, tenant="y", idempotency_key=key
    )


def test_job_row_keeps_its_request() -> None:
    """The stored job holds its model, params, tenant, metadata and new messages."""
    job_id = enqueue_completion(
        "m", USER, params={"temperature": 0.5}, tenant="t", metadata={"feature": "f"}
    )
    row = sql(
        "SELECT model, params, tenant, metadata, input_messages FROM jobs WHERE id = :j",
        j=job_id,
    )
    assert row == [("m", {"temperature": 0.5}, "t", {"feature": "f"}, USER)]


def test_idempotent_follow_up_turn_without_tenant_returns_the_first_job() -> None:
    """A repeated next turn that names no tenant (it inherits the conversation's) and
    reuses its idempotency key returns the first job instead of failing."""
    first = enqueue_completion("m", USER, tenant="inherit")
    (conversation_id,) = sql("SELECT conversation_id FROM jobs WHERE id = :j", j=first)[0]
    key = uuid.uuid4().hex
    turn = enqueue_completion("m", USER, conversation_id=conversation_id, idempotency_key=key)
    again = enqueue_completion("m", USER, conversation_id=conversation_id, idempotency_key=key)
    assert turn == again
    assert sql("SELECT tenant FROM jobs WHERE id = :j", j=turn) == [("inherit",)]


@pytest.mark.parametrize("tenant", ["x y\n", "tab\there", "bell\x07"])
def test_a_tenant_with_control_characters_is_refused(tenant: str) -> None:
    """Every way a tenant is given checks it alike: a job from Python, a limit, a budget."""
    before = counts()
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion("m", USER, tenant=tenant)
    assert caught.value.field == "tenant"
    assert counts() == before
    for command in (
        ["limits", "set", "--concurrency", "1"],
        ["budgets", "set", "--monthly-usd", "5"],
    ):
        done = run_ezq(*command, "--tenant", tenant)
        assert done.returncode != 0 and "--tenant: must not" in done.stderr, done.stderr


def test_an_id_that_is_not_a_uuid_names_no_job_or_conversation() -> None:
    """The Python API answers a malformed id as the HTTP routes and stream_job do: not
    found (a ValueError from uuid said nothing of the job)."""
    from service import JobNotFound, cancel_job, get_conversation, get_job

    for call in (get_job, cancel_job):
        with pytest.raises(JobNotFound):
            call("not-a-uuid")
    with pytest.raises(ConversationNotFound):
        get_conversation("not-a-uuid")
