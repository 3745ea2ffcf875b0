"""A reply's thinking text is kept and shown: paid for as reasoning tokens, it reaches the
job view, the conversation and the stored history on either surface, kept once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service import enqueue_completion, get_conversation
from service.fake_gateway.replies import reasoning_text
from tests.conftest import sql, wait_for_job

pytestmark = pytest.mark.usefixtures("worker")


def test_an_openai_surface_reply_keeps_its_reasoning(fake_gateway: Any) -> None:
    """The OpenAI surface streams thinking as ``reasoning_content``: the job view, the
    stored assistant message and the conversation carry it, as the gateway sent it."""
    ask = {"role": "user", "content": f"reason about {uuid.uuid4().hex}"}
    job = wait_for_job(
        enqueue_completion(
            "deepseek-v4-pro", [ask], params={"thinking": {"type": "enabled"}}, surface="openai"
        )
    )
    assert job["status"] == "succeeded", job
    expected = reasoning_text([ask])
    assert expected and job["reasoning_content"] == expected
    assert sql(
        "SELECT reasoning_content FROM messages WHERE job_id = :j AND role = 'assistant'",
        j=job["job_id"],
    ) == [(expected,)]
    reply = get_conversation(job["conversation_id"])["messages"][-1]
    assert (reply["role"], reply["reasoning_content"]) == ("assistant", expected)


def test_a_reply_without_thinking_has_none(fake_gateway: Any) -> None:
    job = wait_for_job(enqueue_completion("glm-5.1", [{"role": "user", "content": "plain"}]))
    assert job["status"] == "succeeded" and job["reasoning_content"] is None


def test_an_anthropic_surface_reply_shows_its_thinking_text_kept_once(fake_gateway: Any) -> None:
    """On the Anthropic surface the thinking text lives in the thinking blocks (sent back
    with their signatures); the view shows it as ``reasoning_content`` too, and the
    message row does not store it a second time."""
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2000}
    job = wait_for_job(
        enqueue_completion(
            "claude-opus-4-7",
            [{"role": "user", "content": f"think {uuid.uuid4().hex}"}],
            params=thinking,
        )
    )
    assert job["status"] == "succeeded", job
    blocks = job["thinking_blocks"]
    assert blocks and blocks[0]["type"] == "thinking"
    assert job["reasoning_content"] == "".join(
        b["thinking"] for b in blocks if b["type"] == "thinking"
    )
    assert sql(
        "SELECT reasoning_content IS NULL, thinking_blocks IS NOT NULL FROM messages"
        " WHERE job_id = :j AND role = 'assistant'",
        j=job["job_id"],
    ) == [(True, True)]
