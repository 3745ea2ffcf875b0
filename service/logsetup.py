"""Logging: one format (text, or JSON with ``EZQ_LOG_FORMAT=json``), a filter that keeps
secrets out of every log line, and one that keeps task results (reply text) out of Celery's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

# Bearer tokens (the word kept), ezrouter/OpenAI-style keys, Standard Webhooks secrets and
# ezq API keys.
_KEY_SHAPES = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+"),
    re.compile(r"\bsk-[A-Za-z0-9._\-]{6,}"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"),
    re.compile(r"\bezq_[A-Za-z0-9_\-]{16,}"),
)
# What each shape starts with, literally: a line holding none of these (every line a
# worker logs per job) holds no key. Substring tests, not a regular expression: a pattern
# starting with a word boundary or a case-insensitive word is tried at every position of
# the line (13 µs for a job's line against 0.5 µs), on every line and argument logged.
_KEY_PREFIXES = ("sk-", "whsec_", "ezq_")
_BEARER = "bearer"
REDACTED = "[redacted]"


def _may_hold_a_key(text: str) -> bool:
    return any(prefix in text for prefix in _KEY_PREFIXES) or _BEARER in text.lower()


def _redact_key_shapes(text: str) -> str:
    """``text`` with every stretch some key shape matches replaced, the shapes found on the
    text as it is and their stretches merged where they touch: keys written next to each
    other are redacted whole, whichever shape starts first (a bearer token keeps its word)."""
    if not _may_hold_a_key(text):
        return text
    spans = sorted(
        (match.end(1) if match.re.groups else match.start(), match.end())
        for shape in _KEY_SHAPES
        for match in shape.finditer(text)
    )
    parts: list[str] = []
    done = 0
    for start, end in spans:
        if start > done or not parts:  # not within (or touching) the last stretch
            parts += [text[done:start], REDACTED]
        done = max(done, end)
    parts.append(text[done:])
    return "".join(parts)


class RedactSecrets(logging.Filter):
    """Rewrites each record so that known secrets and key-shaped strings never print."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _redact_key_shapes(text)

    def _clean_arg(self, value: object) -> object:
        # Keep each argument's type unless it holds a secret: formatters such as uvicorn's
        # access log unpack ``args`` and format numbers themselves.
        text = value if isinstance(value, str) else str(value)
        cleaned = self._clean(text)
        return value if cleaned == text else cleaned

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._clean_arg(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


def redact(text: str) -> str:
    """``text`` with configured secrets and key-shaped strings replaced, as logs show it.

    For text that leaves the process other than through a log: gateway error messages that
    are stored on jobs, answered over HTTP and sent in webhooks.
    """
    return RedactSecrets(known_secrets())._clean(text)


class DropTaskResults(logging.Filter):
    """Keeps task results and arguments out of Celery's task lines.

    Celery logs "Task ... succeeded in 0.2s: <return value>" at INFO, and our task returns
    the job's view, reply text included; foreign producers' messages carry the prompt in
    their arguments. Only the task name, id and runtime stay.
    """

    _HIDDEN = ("return_value", "args", "kwargs")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "return_value" in record.args:
            record.msg = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
        if isinstance(record.args, dict):
            record.args = {
                k: ("[not logged]" if k in self._HIDDEN else v) for k, v in record.args.items()
            }
        data = getattr(record, "data", None)
        if isinstance(data, dict):
            record.data = {k: v for k, v in data.items() if k not in self._HIDDEN}
        return True


# Celery's loggers that format task results and arguments into their lines.
_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")

_JOB = re.compile(r"\[job=([0-9a-f-]{36})")
_ATTEMPT = re.compile(r"\battempt=(\d+)")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the job's fields.

    ``job_id``, ``attempt``, ``tenant`` and ``conversation_id`` come from the record
    (the worker's job logger sets them) or, for lines that only name the job in their text
    and for Celery's task lines, from those.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        data = getattr(record, "data", None)
        task_id = data.get("id") if isinstance(data, dict) else None
        job = _JOB.search(message)
        attempt = _ATTEMPT.search(message)
        fields = {
            "job_id": getattr(record, "job_id", None) or (job and job.group(1)) or task_id,
            "attempt": getattr(record, "attempt", None)
            or (int(attempt.group(1)) if attempt else None),
            "tenant": getattr(record, "tenant", None),
            "conversation_id": getattr(record, "conversation_id", None),
        }
        entry.update({k: str(v) if k.endswith("_id") else v for k, v in fields.items() if v})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _json_logs() -> bool:
    from service.config import get_settings
    from service.errors import ConfigError

    try:
        return get_settings().ezq_log_format == "json"
    except ConfigError:
        return False


def known_secrets() -> list[str]:
    """The configured secret values, for exact-match redaction."""
    from service.config import get_settings
    from service.errors import ConfigError

    try:
        settings = get_settings()
    except ConfigError:
        # The command reports the bad setting itself; the patterns still redact.
        return []
    secrets: list[str] = []
    if settings.ezrouter_api_key is not None:
        secrets.append(settings.ezrouter_api_key.get_secret_value())
    secrets.extend(settings.api_tokens())
    for name in ("webhook_secret",):
        value = getattr(settings, name, None)
        if value is not None:
            secrets.extend(v for v in value.get_secret_value().split(",") if v)
    return secrets


# HTTP client libraries log every request URL at INFO; callback URLs may carry tokens in
# their query strings, so they only speak up for warnings.
_QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2")


def install_redaction(loggers: Iterable[logging.Logger] = ()) -> RedactSecrets:
    """Attach the redaction filter to every handler of the root logger and ``loggers``."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    redactor = RedactSecrets(known_secrets())
    as_json = _json_logs()
    for logger in (logging.getLogger(), *loggers):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(redactor)
            if as_json and not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(JsonFormatter())
    for name in _TASK_LOGGERS:
        task_logger = logging.getLogger(name)
        if not any(isinstance(f, DropTaskResults) for f in task_logger.filters):
            task_logger.addFilter(DropTaskResults())
    return redactor


def receipts_at_debug_only(level: int | str) -> None:
    """Celery logs every task message it receives ("Task ...[id] received") at INFO, a
    quarter of a job's log lines and about 3 % of a worker's CPU at saturation; its own
    lines already say when it is called and how it ended. Unless ``level`` is DEBUG, that
    line is not logged (Celery checks once, when its consumer starts)."""
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(numeric, int) or numeric > logging.DEBUG:
        logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)


class _IgnoredAtDebug(logging.Filter):
    """Celery's "Task <name>[<id>] ignored" line, which it logs at INFO, as DEBUG: written
    only when the logger logs DEBUG."""

    def __init__(self, task_name: str) -> None:
        super().__init__()
        self.task_name = task_name

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if not (
            isinstance(data, dict)
            and data.get("description") == "ignored"
            and data.get("name") == self.task_name
        ):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def ignored_at_debug_only(task_name: str) -> None:
    """Celery logs "Task <name>[<id>] ignored" at INFO for each message the task drops
    (``Ignore``: a job parked, run in another message's place, or ended before its message
    came), where ezq logs why at DEBUG; a cancelled batch left one line per line not
    started. That line is DEBUG too. Idempotent."""
    trace = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, _IgnoredAtDebug) for f in trace.filters):
        trace.addFilter(_IgnoredAtDebug(task_name))


class _FailureWithoutText(logging.Filter):
    """Celery's "Task <name>[<id>] raised expected: JobFailed('job … failed: <type>:
    <message>')" line without the message: a gateway's message may quote the prompt. The
    producer still gets the whole text from the result backend; the job keeps it."""

    def __init__(self, task_name: str) -> None:
        super().__init__()
        self.task_name = task_name

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if (
            isinstance(data, dict)
            and data.get("name") == self.task_name
            and str(data.get("exc", "")).startswith("JobFailed(")
        ):
            shown = "JobFailed (the job's error is stored with it, not logged)"
            record.data = {**data, "exc": shown}
            if isinstance(record.args, dict):  # the dict the line is formatted with
                record.args = {**record.args, "exc": shown}
        return True


def failures_without_text(task_name: str) -> None:
    """Celery's line for a task that raised ``JobFailed`` names the exception only.
    Idempotent."""
    trace = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, _FailureWithoutText) for f in trace.filters):
        trace.addFilter(_FailureWithoutText(task_name))


def configure_logging(level: str = "WARNING") -> None:
    """Plain stderr logging for CLI commands, secrets redacted.

    Warnings and errors only, so that commands print their results and nothing else.
    """
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    install_redaction()
