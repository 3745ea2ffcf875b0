"""The HTTP contract: one error envelope everywhere, a body limit enforced while reading,
bad input as a 4xx, an OpenAPI document with every status, and /docs without internet."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from typing import Any

import httpx
import pytest

from service.validation import ENQUEUE_FIELDS
from tests.conftest import free_port, sql

TOKEN = "contract-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 100_000
USER = [{"role": "user", "content": "contract"}]


@pytest.fixture(scope="module")
def server(api_server_factory: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=TOKEN, EZQ_API_MAX_BODY_BYTES=str(LIMIT))


@pytest.fixture(scope="module")
def api(server: Any) -> Any:
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        yield client


def assert_envelope(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body["error"]) <= {"type", "message", "field", "job_id", "status"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "kind", "field"),
    [
        ("POST", "/v1/jobs", b'{"model": ', 422, "invalid_request", "body"),
        ("POST", "/v1/jobs", b"", 422, "invalid_request", "body"),
        ("POST", "/v1/jobs", b"   ", 422, "invalid_request", "body"),
        ("POST", "/v1/jobs", b"\xff\xfe", 422, "invalid_request", "body"),
        ("POST", "/v1/jobs", b"[1, 2]", 422, "invalid_request", "body"),
        ("POST", "/v1/jobs", b'"text"', 422, "invalid_request", "body"),
        ("POST", "/v1/jobs", b"1" * 5000, 422, "invalid_request", "body"),
        ("GET", "/nowhere", None, 404, "not_found", None),
        ("GET", "/v1/nowhere", None, 404, "not_found", None),
        ("DELETE", "/v1/jobs", None, 405, "method_not_allowed", None),
        ("PUT", f"/v1/jobs/{uuid.uuid4()}", None, 405, "method_not_allowed", None),
        ("POST", "/healthz", None, 405, "method_not_allowed", None),
        ("GET", "/v1/jobs?limit=0", None, 422, "invalid_request", "limit"),
        ("GET", "/v1/jobs?limit=many", None, 422, "invalid_request", "limit"),
        ("GET", "/v1/jobs?status=bogus", None, 422, "invalid_request", "status"),
        ("GET", "/v1/jobs?since=yesterday", None, 422, "invalid_request", "since"),
        ("GET", "/v1/jobs?until=0.5", None, 422, "invalid_request", "until"),
        ("GET", "/v1/jobs?model=a%00b", None, 422, "invalid_request", "model"),
        ("GET", "/v1/jobs?cursor=zzz", None, 422, "invalid_request", "cursor"),
        ("GET", "/v1/jobs?stauts=queued", None, 422, "invalid_request", "stauts"),
        ("GET", "/v1/jobs/not-a-uuid", None, 404, "job_not_found", None),
        # Routes whose bodies FastAPI parses word their errors as /v1/jobs does.
        ("POST", "/v1/jobs/replay", b'{"model": ', 422, "invalid_request", "body"),
        ("POST", "/v1/jobs/replay", b"", 422, "invalid_request", "body"),
        ("PUT", "/v1/limits", b'{"rpm": ', 422, "invalid_request", "body"),
        ("PUT", "/v1/budgets", b"", 422, "invalid_request", "body"),
        # An unknown query parameter is refused on every route, not ignored.
        ("GET", f"/v1/jobs/{uuid.uuid4()}?foo=bar", None, 422, "invalid_request", "foo"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}/events?foo=1", None, 422, "invalid_request", "foo"),
        ("POST", f"/v1/jobs/{uuid.uuid4()}/cancel?foo=1", None, 422, "invalid_request", "foo"),
        ("GET", f"/v1/conversations/{uuid.uuid4()}?x=1", None, 422, "invalid_request", "x"),
        ("GET", "/v1/limits?foo=1", None, 422, "invalid_request", "foo"),
        ("DELETE", "/v1/limits?tenant=t&foo=1", None, 422, "invalid_request", "foo"),
        ("GET", "/v1/batches?foo=1", None, 422, "invalid_request", "foo"),
        ("GET", "/v1/jobs?metadata.=1", None, 422, "invalid_request", "metadata."),
        # The listing's metadata.KEY filters are the listing's: not taken by the enqueue.
        ("POST", "/v1/jobs?metadata.team=x", b"{}", 422, "invalid_request", "metadata.team"),
    ],
)
def test_every_error_is_the_envelope(
    api: httpx.Client,
    method: str,
    path: str,
    content: bytes | None,
    status: int,
    kind: str,
    field: str | None,
) -> None:
    """Malformed JSON, empty bodies, unknown routes, wrong methods and bad query parameters
    all answer {"error": {"type", "message", "field"?}}, never {"detail": ...}."""
    headers = {"content-type": "application/json"} if content is not None else {}
    response = api.request(method, path, content=content, headers=headers)
    error = assert_envelope(response, status, kind)
    assert error.get("field") == field
    if field == "body":
        assert re.match(
            r"body: (is empty|is not valid JSON|is not UTF-8|must be)", error["message"]
        )


def test_405_names_every_method_of_the_path(api: httpx.Client) -> None:
    """A wrong method's Allow header lists all the methods the path accepts."""
    for path, allow in (
        ("/v1/jobs", "GET, POST"),
        ("/v1/jobs/replay", "POST"),
        (f"/v1/jobs/{uuid.uuid4()}", "GET"),
    ):
        response = api.request("OPTIONS", path)
        assert_envelope(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allow, path


def test_missing_and_wrong_keys_are_the_envelope(server: Any) -> None:
    """No key, a malformed header and an unknown key are 401 in the envelope."""
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer ezq_" + "x" * 43},
    ):
        response = httpx.get(f"{server.url}/v1/jobs", headers=headers)
        assert_envelope(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"[" * 40_000 + b"]" * 40_000, "body"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "body"),
        (json.dumps({"model": "m", "messages": USER, "metadata": nested(80)}).encode(), None),
    ],
)
def test_deep_json_is_a_422(api: httpx.Client, content: bytes, field: str | None) -> None:
    """Deeply nested JSON is refused with a 422 naming where, never a RecursionError 500."""
    before = sql("SELECT count(*) FROM jobs")
    response = api.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
    error = assert_envelope(response, 422, "invalid_request")
    assert "nests deeper than 64 levels" in error["message"]
    if field is not None:
        assert error["field"] == field
    else:
        assert error["field"].startswith("metadata.k.k")
    assert sql("SELECT count(*) FROM jobs") == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}', "model"),
        ('{"model": "m", "messages": [{"role": "user", "content": "a\\udfffb"}]}',
         "messages[0].content"),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": '
         '{"\\ud83d": 1}}', "metadata.\ud83d"),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], '
         '"idempotency_key": "\\udc00"}', "idempotency_key"),
    ],
)  # fmt: skip
def test_lone_surrogates_are_a_422(api: httpx.Client, body: str, field: str) -> None:
    """A lone UTF-16 surrogate in any string is refused with a 422 naming the field."""
    before = sql("SELECT count(*) FROM jobs")
    response = api.post(
        "/v1/jobs", content=body.encode(), headers={"content-type": "application/json"}
    )
    error = assert_envelope(response, 422, "invalid_request")
    assert error["field"] == field
    assert "lone UTF-16 surrogate" in error["message"]
    assert sql("SELECT count(*) FROM jobs") == before


def test_python_producer_refuses_lone_surrogates(service_env: dict[str, str]) -> None:
    """enqueue_completion refuses a lone surrogate too, naming the field; nothing is written."""
    from service import InvalidRequest, enqueue_completion

    with pytest.raises(InvalidRequest) as refused:
        enqueue_completion("m", [{"role": "user", "content": "bad \udc80"}], tenant="t")
    assert refused.value.field == "messages[0].content"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    assert match
    return int(match.group(1))


def raw_request(server: Any, head: str, chunks: list[bytes], *, budget: int = 0) -> bytes:
    """Send ``head`` and then ``chunks``; keep streaming up to ``budget`` filler bytes until
    the server answers; return what it answered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            sock.sendall(chunk)
        sent = 0
        sock.setblocking(False)
        answer = b""
        filler = b"1000\r\n" + b"x" * 0x1000 + b"\r\n" if budget else b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer:
                    length = re.search(rb"content-length: (\d+)", answer.lower())
                    if length and len(answer.split(b"\r\n\r\n", 1)[1]) >= int(length.group(1)):
                        break
            except BlockingIOError:
                if sent < budget:
                    try:
                        sock.send(filler)
                        sent += len(filler)
                    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                        time.sleep(0.01)
                else:
                    time.sleep(0.01)
            except ConnectionResetError:
                break
    return answer


def test_declared_oversize_body_is_a_413_before_reading_or_authenticating(server: Any) -> None:
    """A 200 MB Content-Length without a key is answered 413 at once, without reading it."""
    before = rss_kib(server.proc.pid)
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {200 * 1024 * 1024}\r\n\r\n"
    )
    answer = raw_request(server, head, [b"{" * 1000])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "payload_too_large"
    assert rss_kib(server.proc.pid) - before < 20_000


def test_chunked_oversize_body_stops_at_the_limit(server: Any) -> None:
    """A chunked body with no length is cut at the limit: 413, and memory stays flat."""
    before = rss_kib(server.proc.pid)
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        "transfer-encoding: chunked\r\nAuthorization: Bearer wrong-token-0123456789\r\n\r\n"
    )
    answer = raw_request(server, head, [], budget=50 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert rss_kib(server.proc.pid) - before < 20_000


def test_body_at_the_limit_is_read_and_one_byte_more_is_not(api: httpx.Client) -> None:
    """The limit is exact: a body of LIMIT bytes is processed, LIMIT + 1 is a 413."""
    base = json.dumps({"model": "m", "messages": [{"role": "user", "content": ""}]})
    fits = base.replace('"content": ""', '"content": "' + "x" * (LIMIT - len(base)) + '"')
    assert len(fits) == LIMIT
    headers = {"content-type": "application/json"}
    assert api.post("/v1/jobs", content=fits.encode(), headers=headers).status_code == 202
    over = fits.replace('"x', '"xx', 1).encode()
    assert_envelope(api.post("/v1/jobs", content=over, headers=headers), 413, "payload_too_large")


def test_openapi_documents_every_status_and_the_typed_body(api: httpx.Client) -> None:
    """/openapi.json names the body model's fields and every error status of each route."""
    spec = api.get("/openapi.json").json()
    post = spec["paths"]["/v1/jobs"]["post"]
    assert set(post["responses"]) == {"202", "401", "403", "404", "409", "413", "422", "503"}
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert tuple(body["properties"]) == ENQUEUE_FIELDS
    assert set(body["required"]) == {"model", "messages"}
    assert "ChatMessage" in spec["components"]["schemas"]
    assert "CompletionParams" in spec["components"]["schemas"]
    expected = {
        ("/v1/jobs", "get"): {"200", "401", "403", "422", "503"},
        # 422: an unknown query parameter, refused on every route.
        ("/v1/jobs/{job_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/v1/jobs/{job_id}/cancel", "post"): {"200", "401", "404", "409", "413", "422", "503"},
        ("/v1/conversations/{conversation_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/healthz", "get"): {"200", "503"},
    }
    for (path, method), statuses in expected.items():
        assert set(spec["paths"][path][method]["responses"]) == statuses, path
    envelope = "#/components/schemas/ErrorEnvelope"
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and path != "/healthz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": envelope}, (path, method, code)
    assert "HTTPValidationError" not in json.dumps(spec)


def test_docs_work_without_internet(server: Any) -> None:
    """/docs loads only assets that the server itself serves (no CDN)."""
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url: ?["']([^"']+)["']""", page.text)
    assert urls
    assert "cdn" not in page.text.lower()
    for url in urls:
        assert url.startswith("/"), url
        assert httpx.get(f"{server.url}{url}").status_code == 200, url
    assert any(url.endswith("swagger-ui-bundle.js") for url in urls)


def test_database_down_is_a_503_in_the_envelope(api_server_factory: Any) -> None:
    """With the database unreachable, keys and tokens alike get a 503 envelope, not a 500."""
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/ezq"
    server = api_server_factory(EZQ_API_TOKENS=TOKEN, DATABASE_URL=down)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        by_token = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=AUTH)
        by_key = client.get("/v1/jobs", headers={"Authorization": "Bearer ezq_" + "k" * 43})
    assert_envelope(by_token, 503, "unavailable")
    assert_envelope(by_key, 503, "unavailable")


def test_no_free_pooled_connection_is_a_503_too() -> None:
    """A pool whose connections are all busy past its timeout is the database being
    unavailable, as the README says: a 503 envelope with Retry-After, not a 500."""
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from service.api.app import create_app

    app = create_app()

    @app.get("/_test/pool-timeout")
    def _busy() -> None:
        raise PoolTimeout("QueuePool limit of size 20 overflow 10 reached")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/_test/pool-timeout")
    assert_envelope(answer, 503, "unavailable")
    assert answer.headers["Retry-After"] == "5"
