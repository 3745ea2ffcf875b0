"""GET /v1/jobs: filters, keyset pages that never repeat or skip a job, and index use."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service.db.job_list import JobFilter, page_statement
from service.db.session import get_engine, transaction
from tests.conftest import run_ezq

TOKEN = "list-token-" + uuid.uuid4().hex
TENANT = "lister-" + uuid.uuid4().hex[:8]
OTHER = "other-" + uuid.uuid4().hex[:8]


def seed(tenant: str, count: int, **overrides: Any) -> list[str]:
    """``count`` jobs of ``tenant`` written in one transaction (so they share created_at)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    values = {"model": "m", "status": "queued", "metadata": "{}", **overrides}
    with transaction() as session:
        conversation = session.execute(
            text(
                "INSERT INTO conversations (id, tenant) VALUES (gen_random_uuid(), :t) RETURNING id"
            ),
            {"t": tenant},
        ).scalar_one()
        session.execute(
            text(
                "INSERT INTO jobs (id, conversation_id, status, model, input_messages, tenant,"
                " metadata, request_hash) VALUES (:id, :c, :status, :model, '[]', :t,"
                " CAST(:metadata AS jsonb), 'x')"
            ),
            [{"id": i, "c": conversation, "t": tenant, **values} for i in ids],
        )
    return ids


@pytest.fixture(scope="module")
def client(api_server_factory: Any) -> Any:
    server = api_server_factory(EZQ_API_TOKENS=TOKEN)
    done = run_ezq("keys", "create", "--tenant", TENANT)
    assert done.returncode == 0, done.stderr
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {done.stdout.strip()}"}
    ) as client:
        yield client


def all_pages(client: httpx.Client, **params: Any) -> list[list[str]]:
    pages = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/jobs", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([job["job_id"] for job in body["jobs"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_pages_cover_every_job_once_newest_first(client: httpx.Client) -> None:
    """Paging with a cursor returns every job exactly once, newest first, ties broken by id."""
    older = seed(TENANT, 4)
    newer = seed(TENANT, 7)  # seven jobs sharing one created_at: ties across page edges
    seed(OTHER, 3)
    pages = all_pages(client, limit=3)
    listed = [job_id for page in pages for job_id in page]
    assert [len(page) for page in pages[:-1]] == [3] * (len(pages) - 1)
    assert len(listed) == len(set(listed))
    assert listed[:7] == sorted(newer, reverse=True)
    assert set(older) <= set(listed[7:])


def test_filters(client: httpx.Client) -> None:
    """status, model, since, until and metadata.KEY narrow the list, and combine."""
    tag = uuid.uuid4().hex
    failed = seed(TENANT, 2, status="failed", model="special", metadata=f'{{"run": "{tag}"}}')
    counted = seed(TENANT, 1, metadata=f'{{"run": "{tag}", "n": 3, "flag": true}}')

    def ids(**params: Any) -> set[str]:
        return {job for page in all_pages(client, **params) for job in page}

    assert ids(**{"metadata.run": tag}) == set(failed + counted)
    assert ids(**{"metadata.run": tag, "status": "failed"}) == set(failed)
    assert ids(**{"metadata.run": tag, "status": ["failed", "queued"]}) == set(failed + counted)
    assert ids(**{"metadata.run": tag, "model": "special"}) == set(failed)
    assert ids(**{"metadata.n": "3"}) == set(counted)
    assert ids(**{"metadata.flag": "true", "metadata.run": tag}) == set(counted)
    assert ids(**{"metadata.run": "no-such-run"}) == set()
    # One key given twice: either value (as for every repeated filter).
    assert ids(**{"metadata.n": ["3", "4"], "metadata.run": tag}) == set(counted)
    assert ids(**{"metadata.run": [tag, "no-such-run"], "status": "failed"}) == set(failed)
    # What JSON cannot hold in Postgres matches as text only: no job, and no 500.
    for spelled in ("NaN", "Infinity", "-Infinity", "1e400"):
        assert ids(**{"metadata.n": spelled, "metadata.run": tag}) == set()
    texts = seed(TENANT, 1, metadata=f'{{"run": "{tag}-text", "n": "NaN"}}')
    assert ids(**{"metadata.n": "NaN", "metadata.run": f"{tag}-text"}) == set(texts)
    now = datetime.now(UTC)
    assert ids(**{"metadata.run": tag, "since": (now - timedelta(minutes=5)).isoformat()}) == set(
        failed + counted
    )
    assert ids(**{"metadata.run": tag, "until": (now - timedelta(minutes=5)).isoformat()}) == set()
    assert ids(**{"metadata.run": tag, "tenant": TENANT}) == set(failed + counted)


def test_a_single_valued_filter_given_twice_is_refused(client: httpx.Client) -> None:
    """``model=a&model=b`` names the parameter instead of silently filtering on one."""
    response = client.get("/v1/jobs", params=[("model", "a"), ("model", "b")])
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "model"
    assert client.get("/v1/jobs", params=[("status", "queued"), ("status", "failed")]).is_success


@pytest.mark.parametrize(
    "flt",
    [
        JobFilter(tenants=frozenset({"t"})),
        JobFilter(tenants=frozenset({"t"}), statuses=("failed",)),
        JobFilter(tenants=None),
        JobFilter(tenants=None, metadata=(("feature", "x"),)),
    ],
)
def test_list_queries_are_served_by_an_index(flt: JobFilter) -> None:
    """Each page's query can be answered from an index; it never needs to scan every job."""
    after = (datetime.now(UTC), uuid.uuid4())
    statement = page_statement(flt, limit=50, after=after)
    compiled = statement.compile(get_engine(), compile_kwargs={"literal_binds": True})
    with get_engine().connect() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {compiled}")))
    assert "Seq Scan on jobs" not in plan, plan
    assert "Index" in plan, plan
