"""The prompt estimate that flow control reserves at admission covers everything a call sends
as prompt: its messages and its params (``tools``, ``response_format``, ``tool_choice``), and
text in any script, so budgets and token limits hold for tool-heavy and non-Latin jobs."""

from __future__ import annotations

import json
import math
import secrets
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import WorkerProcess, run_ezq, sql, wait_for_job
from tests.flow_support import (
    MODEL,
    admission_lag,
    enqueue_many,
    new_tenant,
    price_per_token,
    slow,
    statuses,
    wait_until,
)

# Priced at $100 per million tokens by the budget tests too (the same price).
PRICED = "claude-haiku-4-5"
CJK = "東京の天気は晴れです。明日は雨が降るでしょう。会議は午後三時から始まります。"


def _tool(properties: int = 60) -> dict[str, Any]:
    """One function whose JSON schema alone is some 1,700 prompt tokens."""
    return {
        "type": "function",
        "function": {
            "name": "record_customer",
            "description": "Store one customer record with every field the form collected.",
            "parameters": {
                "type": "object",
                "properties": {
                    f"field_{i}": {
                        "type": "string",
                        "description": f"Field number {i} of the customer record, free text"
                        " exactly as the customer typed it into the form",
                    }
                    for i in range(properties)
                },
                "required": ["field_0"],
            },
        },
    }


def _settled(job_ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    return sql(
        "SELECT job_id::text, tokens_reserved, tokens_used, cost_reserved FROM flow_admissions"
        " WHERE job_id = ANY(:ids) AND settled_at IS NOT NULL",
        ids=[str(j) for j in job_ids],
    )


def _usage(job_ids: list[uuid.UUID]) -> dict[str, tuple[int, int, Decimal | None]]:
    rows = sql(
        "SELECT job_id::text, prompt_tokens, total_tokens, cost_usd FROM token_usage"
        " WHERE job_id = ANY(:ids)",
        ids=[str(j) for j in job_ids],
    )
    return {job: (prompt, total, cost) for job, prompt, total, cost in rows}


def test_a_budget_holds_against_jobs_carrying_large_tools(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """Each call's tools are most of its prompt: its reservation covers them, so concurrent
    tool-heavy jobs stop at the budget (the rest fail budget_exceeded, no call made) instead
    of each reserving its short message and together spending many times the budget."""
    price_per_token(PRICED)
    tenant, marker = new_tenant(), f"est-budget-{secrets.token_hex(4)}"
    # $0.50 is 5,000 tokens at $0.0001: room for two such calls' worst cases, not six.
    assert run_ezq("budgets", "set", "--tenant", tenant, "--monthly-usd", "0.5").returncode == 0
    slow(fake_gateway, marker, latency=0.5)
    worker_factory(env={"EZQ_QUEUE": own_queue})
    params = {"max_tokens": 10, "tools": [_tool()], "tool_choice": "none"}
    jobs = enqueue_many(6, marker, tenant=tenant, model=PRICED, params=params)
    ended = {str(j): wait_for_job(j, timeout=60) for j in jobs}

    failed = [v for v in ended.values() if v["status"] == "failed"]
    assert {v["error"]["type"] for v in failed} == {"budget_exceeded"}
    assert all(v["attempts"] == 0 for v in failed)
    ran = [j for j, v in ended.items() if v["status"] == "succeeded"]
    assert ran and failed, statuses(jobs)
    usage = _usage(jobs)
    assert set(usage) == set(ran)
    assert all(prompt > 1500 for prompt, _, _ in usage.values())  # the tools were billed
    spent = sum((cost for _, _, cost in usage.values() if cost is not None), Decimal(0))
    assert spent <= Decimal("0.5")

    wait_until(lambda: len(_settled(jobs)) == len(ran), "every call settled")
    for job, reserved, used, cost_reserved in _settled(jobs):
        assert reserved >= used == usage[job][1]
        assert cost_reserved >= usage[job][2]


def test_a_token_limit_admits_no_more_tool_heavy_calls_than_the_window_allows(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """Under --tpm 4000 over a 2 s window, calls of some 1,800 tokens each (nearly all of it
    tools) reach the gateway at most two per window, each reservation covering its usage."""
    tenant, marker = new_tenant(), f"est-tpm-{secrets.token_hex(4)}"
    assert run_ezq("limits", "set", "--tenant", tenant, "--tpm", "4000").returncode == 0
    worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_FLOW_WINDOW": "2"})
    params = {"max_tokens": 10, "tools": [_tool()], "tool_choice": "none"}
    jobs = enqueue_many(5, marker, tenant=tenant, params=params)
    for job_id in jobs:
        assert wait_for_job(job_id, timeout=60)["status"] == "succeeded"
    usage = _usage(jobs)
    assert len(usage) == 5 and all(total > 1500 for _, total, _ in usage.values())

    arrivals = sorted(
        (r.received_at, r.body["messages"][-1]["content"])
        for r in fake_gateway.requests
        if marker in str(r.body)
    )
    total_of = dict(
        sql(
            "SELECT j.input_messages->0->>'content', u.total_tokens FROM jobs j"
            " JOIN token_usage u ON u.job_id = j.id WHERE j.id = ANY(:ids)",
            ids=[str(j) for j in jobs],
        )
    )
    lag = admission_lag(fake_gateway, marker, jobs)
    assert lag < 1.0
    for i, (start, _) in enumerate(arrivals):
        window = [total_of[c] for a, c in arrivals[i:] if a < start + 2.0 - lag]
        assert sum(window) <= 4000, (arrivals, total_of)

    wait_until(lambda: len(_settled(jobs)) == 5, "every call settled")
    for job, reserved, used, _ in _settled(jobs):
        assert reserved >= used == usage[job][1]


def _real_tokens_at_least(messages: list[Any]) -> int:
    """A floor on what a real tokenizer counts for ``messages``: 4 ASCII characters a token
    and one token for every other character (CJK runs about one a character)."""
    text = json.dumps(messages, ensure_ascii=False)
    wide = sum(1 for ch in text if ord(ch) > 127)
    return math.ceil((len(text) - wide) / 4) + wide


def test_a_cjk_prompt_is_not_underestimated(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """A Japanese first turn, then a second turn over that history: each call's prompt
    estimate is at least the gateway's prompt usage and at least one token per CJK
    character sent (what real tokenizers count), where characters / 4 said a quarter."""
    tenant, marker = new_tenant(), f"est-cjk-{secrets.token_hex(4)}"
    # A limit far above the calls makes every call reserve (and record) its estimate.
    assert run_ezq("limits", "set", "--tenant", tenant, "--tpm", "1000000").returncode == 0
    worker_factory(env={"EZQ_QUEUE": own_queue})
    from service.producer import enqueue_completion

    first = enqueue_completion(
        MODEL,
        [{"role": "user", "content": f"{marker} 1 {CJK * 8}"}],
        tenant=tenant,
        params={"max_tokens": 10},
    )
    assert wait_for_job(first)["status"] == "succeeded"
    ((conversation,),) = sql("SELECT conversation_id FROM jobs WHERE id = :j", j=str(first))
    second = enqueue_completion(
        MODEL,
        [{"role": "user", "content": f"{marker} 2 {CJK * 8}"}],
        conversation_id=conversation,
        tenant=tenant,
        params={"max_tokens": 10},
    )
    assert wait_for_job(second)["status"] == "succeeded"
    jobs = [first, second]
    wait_until(lambda: len(_settled(jobs)) == 2, "both calls settled")
    reserved = {job: tokens for job, tokens, _, _ in _settled(jobs)}
    usage = _usage(jobs)
    for turn, job in enumerate(jobs, start=1):
        (body,) = [
            r.body
            for r in fake_gateway.requests
            if str(r.body["messages"][-1]["content"]).startswith(f"{marker} {turn} ")
        ]
        estimate = reserved[str(job)] - 10
        assert estimate >= usage[str(job)][0]
        assert estimate >= _real_tokens_at_least(body["messages"]), (turn, estimate)


@pytest.mark.usefixtures("service_env")
def test_the_estimate_counts_response_format_and_tool_choice() -> None:
    """A JSON schema in ``response_format`` and a ``tool_choice`` are sent as prompt text:
    the estimate grows by at least their JSON length / 4 (and a CJK description in the
    schema by at least one token a character)."""
    from service.db import flow as flow_db
    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request

    schema = {
        "type": "object",
        "properties": {
            f"answer_{i}": {"type": "string", "description": f"答えの{i}番目の部分です。" * 3}
            for i in range(40)
        },
        "required": ["answer_0"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answers", "strict": True, "schema": schema},
    }
    tool_choice = {"type": "function", "function": {"name": "record_customer"}}
    messages = [{"role": "user", "content": "Fill in the answers."}]
    with transaction() as session:
        plain, _ = queries.create_job(
            session, validate_request(model=MODEL, messages=messages, params={"max_tokens": 10})
        )
        shaped, _ = queries.create_job(
            session,
            validate_request(
                model=MODEL,
                messages=messages,
                params={
                    "max_tokens": 10,
                    "tools": [_tool(5)],
                    "tool_choice": tool_choice,
                    "response_format": response_format,
                },
            ),
        )
        base = flow_db.estimate(session, plain, default_max_tokens=4096)
        full = flow_db.estimate(session, shaped, default_max_tokens=4096)
    assert (base.max_tokens, full.max_tokens) == (10, 10)
    extra = [_tool(5), tool_choice, response_format]
    assert full.prompt_tokens - base.prompt_tokens >= _real_tokens_at_least(extra)


def test_a_call_on_the_anthropic_surface_reserves_the_cap_it_sends(
    worker_factory: Callable[..., WorkerProcess], fake_gateway: Any, own_queue: str
) -> None:
    """A request naming no max_tokens is sent to the Anthropic surface with 8192 (plus the
    thinking budget with thinking on), not EZQ_FLOW_DEFAULT_MAX_TOKENS (4096): flow control
    reserves that cap, so a budget cannot be overshot by the surface's own default. The same
    request on the OpenAI surface reserves the default."""
    from service.producer import enqueue_completion

    tenant, marker = new_tenant(), f"est-cap-{secrets.token_hex(4)}"
    assert run_ezq("limits", "set", "--tenant", tenant, "--tpm", "1000000").returncode == 0
    worker_factory(env={"EZQ_QUEUE": own_queue})
    tools = {"tools": [_tool(2)], "tool_choice": "none"}  # a plain reply on both surfaces
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    cases = [("openai", tools), ("auto", tools), ("openai", thinking), ("anthropic", thinking)]
    jobs = [
        enqueue_completion(
            "claude-sonnet-4-6",
            [{"role": "user", "content": f"{marker} cap"}],
            tenant=tenant,
            params=params,
            surface=surface,
        )
        for surface, params in cases
    ]
    for job_id in jobs:
        ended = wait_for_job(job_id)
        assert ended["status"] == "succeeded", ended["error"]
    wait_until(lambda: len(_settled(jobs)) == 4, "every call settled")
    reserved = {job: tokens for job, tokens, _, _ in _settled(jobs)}
    openai_tools, anthropic_tools, openai_thinking, anthropic_thinking = (
        reserved[str(j)] for j in jobs
    )
    # The same messages and params: the prompt estimates are equal, the caps differ.
    assert anthropic_tools - openai_tools == 8192 - 4096
    assert anthropic_thinking - openai_thinking == 2048 + 8192 - 4096
    paths = {r.path for r in fake_gateway.requests if marker in str(r.body)}
    assert paths == {"/v1/chat/completions", "/anthropic/v1/messages"}
