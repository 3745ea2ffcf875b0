"""The ezq error tree, organised by who has to act.

Caller errors (``EzqCallerError``) mean the request itself is wrong: fix it and try again.
Gateway errors (``GatewayError``) come from talking to ezrouter and are split into
retryable (connection trouble, 5xx, a broken stream) and permanent (every 4xx).
"""

from __future__ import annotations

from typing import Any


class EzqError(Exception):
    """Base class of every error ezq raises on purpose."""


class ConfigError(EzqError):
    """A setting is missing or malformed."""


class EzqCallerError(EzqError):
    """The request is wrong; nothing was written."""


class InvalidRequest(EzqCallerError):
    """A field of the request is invalid."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class ConversationNotFound(EzqCallerError):
    """The conversation does not exist."""

    def __init__(self, conversation_id: object) -> None:
        self.conversation_id = conversation_id
        super().__init__(f"conversation_id: no conversation {conversation_id}")


class JobNotFound(EzqCallerError):
    """The job does not exist."""

    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id}")


class JobAlreadyFinished(EzqCallerError):
    """The job has already ended, so it can no longer be cancelled."""

    def __init__(self, job_id: object, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} already ended ({status})")


class JobNotReplayable(EzqCallerError):
    """The job cannot be replayed: ``reason`` is a stable code (see service/ops/replay.py)."""

    def __init__(self, job_id: object, reason: str, message: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id} cannot be replayed: {message}")


class IdempotencyConflict(EzqCallerError):
    """The idempotency key was already used for a different request."""

    def __init__(self, key: str, job_id: object) -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(
            f"idempotency_key: {key!r} was already used by job {job_id} for a different request"
        )


class JobIdConflict(IdempotencyConflict):
    """A Celery message names an existing ``job_id`` with a different request."""

    def __init__(self, job_id: object) -> None:
        self.key = ""
        self.job_id = job_id
        EzqCallerError.__init__(
            self, f"job_id: {job_id} already names a job with a different request"
        )


class BatchNotFound(EzqCallerError):
    """The batch does not exist (or belongs to another tenant: answered alike)."""

    def __init__(self, batch_id: object) -> None:
        self.batch_id = batch_id
        super().__init__(f"no batch {batch_id}")


class FileNotFound(EzqCallerError):
    """The file does not exist (or belongs to another tenant: answered alike)."""

    def __init__(self, file_id: object) -> None:
        self.file_id = file_id
        super().__init__(f"no file {file_id}")


class BatchAlreadyFinished(EzqCallerError):
    """The batch has already ended, so it can no longer be cancelled."""

    def __init__(self, batch_id: object, status: str) -> None:
        self.batch_id = batch_id
        self.status = status
        super().__init__(f"batch {batch_id} already ended ({status})")


# How many other bad lines an InvalidBatchFile's message numbers (its ``errors`` hold more).
SHOWN_LINE_NUMBERS = 10


class InvalidBatchFile(EzqCallerError):
    """Lines of a batch file are invalid; ``errors`` holds the first ones, in line order,
    each a dict with ``line``, ``param`` (the field at fault) and ``message``."""

    def __init__(self, errors: list[dict[str, Any]], *, more: bool = False) -> None:
        self.errors = errors
        self.more = more
        first = errors[0]
        others = len(errors) - 1
        tail = ""
        if others or more:
            # Which lines, so that a caller can fix them all at once (the first few).
            lines = [str(e["line"]) for e in errors[1 : 1 + SHOWN_LINE_NUMBERS]]
            listed = ", ".join(lines) + (", …" if others > len(lines) or more else "")
            where = f": line{'s' if len(lines) > 1 else ''} {listed}" if lines else ""
            tail = f" (and {others}{'+' if more else ''} more{where})"
        super().__init__(f"line {first['line']}: {first['param']}: {first['message']}{tail}")


class TenantForbidden(EzqCallerError):
    """The API key may not act for this tenant."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(f"tenant: this key may not act for tenant {tenant!r}")


class ApiKeyNotFound(EzqCallerError):
    """No API key has this id (or shown prefix)."""

    def __init__(self, key_id: object) -> None:
        self.key_id = key_id
        super().__init__(f"no API key {key_id}")


class PriceConflict(EzqCallerError):
    """The model already has a different price from that instant; prices are never edited."""

    def __init__(self, model: str, effective_from: object, price_id: int | None) -> None:
        self.model = model
        self.effective_from = effective_from
        self.price_id = price_id
        which = f" (price {price_id})" if price_id is not None else ""
        super().__init__(
            f"{model} already has a different price from {effective_from}{which}; "
            "prices are versioned, not edited: give the new one a later start"
        )


class InvalidPriceFile(EzqCallerError):
    """A line of a price file is wrong; nothing was imported."""

    def __init__(self, path: str, line: int, column: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason
        super().__init__(f"{path}, line {line}, column {column}: {reason}; nothing was imported")


class GatewayError(EzqError):
    """A gateway call failed.

    ``status`` is the HTTP status when the gateway answered (200 for a stream that broke
    after a 200, and for a finished reply that cannot be used), ``request_id`` the
    ``x-oneapi-request-id`` it sent, ``error_type`` a stable short name stored on the job,
    ``surface`` the ezrouter surface called (None when no call was made).
    """

    retryable: bool = False
    error_type: str = "gateway_error"
    surface: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        body: Any = None,
        quoted: bool = False,
    ) -> None:
        from service.logsetup import redact

        # An upstream may echo the request, key included: the message is stored on the job,
        # answered over HTTP and sent in webhooks, so it is redacted like a log line.
        message = redact(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.body = body
        # The message holds the gateway's own words, which may quote the request (a
        # prompt echoed in a 400, a context overflow): stored and answered, never logged.
        self.quoted = quoted
        super().__init__(message)

    def describe(self) -> str:
        """One line for the job's ``error`` column: status first, then the message."""
        prefix = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{prefix}{self.message}"

    def loggable(self) -> str:
        """``describe()`` for a log line: without the gateway's own words."""
        if not self.quoted:
            return self.describe()
        prefix = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{prefix}the gateway's message is stored with the attempt, not logged"


class RetryableGatewayError(GatewayError):
    """Worth another attempt: the gateway or the network failed, not the request."""

    retryable = True


class GatewayConnectionError(RetryableGatewayError):
    """No usable answer: connect failure, reset, or a timeout."""

    error_type = "connection_error"


class GatewayTimeout(GatewayConnectionError):
    """The connect, read or per-attempt deadline passed."""

    error_type = "timeout"


class BrokenStream(GatewayConnectionError):
    """The stream ended before its end (no finish reason, no ``[DONE]``) or was garbled.

    Counted as a connection error: what arrived is not a reply and is never stored.
    """

    error_type = "broken_stream"


class GatewayServerError(RetryableGatewayError):
    """HTTP 5xx, or an error frame inside a stream that had started."""

    error_type = "server_error"


class PermanentGatewayError(GatewayError):
    """Any 4xx (429 included): retrying the same request cannot help."""

    error_type = "client_error"


class ReplyDefect(GatewayError):
    """The gateway answered 200 and finished, but the reply cannot be used as a success.

    Not retried: the defect is deterministic for the same request on the same surface.
    ``usage`` is the finished call's usage object (None if it sent none): the call was
    answered in full and paid for, so its usage is recorded with the failure.
    """

    usage: dict[str, Any] | None = None

    def describe(self) -> str:
        return self.message


class GatewayToolCallsMissing(ReplyDefect):
    """ezrouter's GW-001: ``finish_reason: "tool_calls"`` without a parseable tool call."""

    error_type = "gateway_tool_calls_missing"


class ReplyNotMatchingSchema(ReplyDefect):
    """A ``json_schema`` request with ``strict: true`` got a reply that is not JSON or does
    not match the schema."""

    error_type = "json_schema_mismatch"


class InternalError(PermanentGatewayError):
    """ezq itself failed while running the call (a bug); the job fails, visibly."""

    error_type = "internal_error"


class WebhookTargetRefused(EzqError):
    """The callback's address is one ezq must not connect to (loopback, private, ...).

    Raised before any connection is opened; the delivery fails and is not retried.
    """

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        shown = f"{address} is" if host == address else f"{host} resolves to {address},"
        super().__init__(f"refused: {shown} {reason}")
