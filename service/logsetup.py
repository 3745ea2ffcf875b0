"""Logging: one format, and a filter that keeps secrets out of every log line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Bearer tokens, ezrouter/OpenAI-style keys, Standard Webhooks secrets and ezq API keys.
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+"),
    re.compile(r"\bsk-[A-Za-z0-9._\-]{6,}"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"),
    re.compile(r"\bezq_[A-Za-z0-9_\-]{16,}"),
]
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Rewrites each record so that known secrets and key-shaped strings never print."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
        return text

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
    for logger in (logging.getLogger(), *loggers):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(redactor)
    return redactor


def configure_logging(level: str = "WARNING") -> None:
    """Plain stderr logging for CLI commands, secrets redacted.

    Warnings and errors only, so that commands print their results and nothing else.
    """
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_redaction()
