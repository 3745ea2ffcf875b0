"""Configuration: one typed ``Settings`` read from the environment, on demand."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import math
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import constants as c
from service.errors import ConfigError

# The schemes both kombu and redis-py take: the worker's own Redis clients (the sweep's
# broker depth, live tokens, ``/healthz``) read the broker's URL too.
REDIS_SCHEMES = ("redis://", "rediss://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


class Settings(BaseSettings):
    """Every setting ezq reads. Field names are the environment variable names."""

    # No setting means forever: "inf" (or "nan") would overflow a wait or reach Postgres.
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, allow_inf_nan=False
    )

    ezrouter_api_key: SecretStr | None = None
    ezrouter_base_url: str = c.DEFAULT_EZROUTER_BASE_URL
    # The Anthropic surface's root (the SDK appends /v1/messages); derived when unset.
    ezrouter_anthropic_base_url: str | None = None
    # ``pattern=surface`` pairs, comma-separated, first match wins: the surface a request
    # gets when it names none (fnmatch patterns on the model id).
    ezq_surface_defaults: Annotated[tuple[tuple[str, str], ...], NoDecode] = ()
    database_url: str = c.DEFAULT_DATABASE_URL
    celery_broker_url: str = c.DEFAULT_BROKER_URL
    celery_result_backend: str | None = None
    ezq_result_expires: float = Field(default=c.RESULT_EXPIRES_S, gt=0)

    ezq_queue: str = Field(default=c.DEFAULT_QUEUE, min_length=1)
    ezq_max_attempts: int = Field(default=c.MAX_ATTEMPTS, ge=1, le=100)
    ezq_retry_backoff_base: float = Field(default=c.RETRY_BACKOFF_BASE_S, gt=0)
    ezq_retry_backoff_max: float = Field(default=c.RETRY_BACKOFF_MAX_S, gt=0)
    ezq_gateway_connect_timeout: float = Field(default=c.GATEWAY_CONNECT_TIMEOUT_S, gt=0)
    ezq_gateway_read_timeout: float = Field(default=c.GATEWAY_READ_TIMEOUT_S, gt=0)
    ezq_gateway_attempt_deadline: float = Field(default=c.GATEWAY_ATTEMPT_DEADLINE_S, gt=0)
    ezq_worker_concurrency: int = Field(default=c.WORKER_CONCURRENCY, ge=1, le=1000)
    # The CPU a worker process pins itself to (``ezq worker --cpu``): a number, "auto" (one
    # no other worker of the host took), or None: not pinned.
    ezq_worker_cpu: int | Literal["auto"] | None = None
    # The worker process's garbage collector thresholds, three comma-separated counts.
    ezq_worker_gc_thresholds: Annotated[tuple[int, int, int], NoDecode] = c.WORKER_GC_THRESHOLDS
    # Postgres connections a process keeps (a few more are opened for bursts).
    ezq_db_pool_size: int = Field(default=c.DB_POOL_SIZE, ge=1, le=500)
    # Celery task events (what Flower and `celery events` show); off saves a worker the
    # Redis publishes of three events per job.
    ezq_task_events: bool = True
    ezq_max_request_bytes: int = Field(default=c.MAX_REQUEST_BYTES, ge=1_000)
    ezq_sweep_stale_after: float = Field(default=c.SWEEP_STALE_AFTER_S, gt=0)
    ezq_sweep_interval: float = Field(default=c.SWEEP_INTERVAL_S, ge=0)
    ezq_redispatch_after: float = Field(default=c.REDISPATCH_AFTER_S, gt=0)
    ezq_lease_seconds: float = Field(default=c.LEASE_S, gt=0)
    ezq_heartbeat_interval: float = Field(default=c.HEARTBEAT_INTERVAL_S, gt=0)
    ezq_record_retry_for: float = Field(default=c.RECORD_RETRY_FOR_S, ge=0)
    ezq_broker_visibility_timeout: float = Field(default=c.BROKER_VISIBILITY_TIMEOUT_S, ge=10)
    ezq_publish_timeout: float = Field(default=c.PUBLISH_TIMEOUT_S, gt=0, le=60)
    # Flow control (service/flow): the window of the request and token rate limits, how
    # long a throttled job waits at most before it checks again, the completion tokens
    # reserved for a request without max_tokens, how long a waiting job takes to gain one
    # priority step, and whether a budget lets through models without a price.
    ezq_flow_window: float = Field(default=c.FLOW_WINDOW_S, gt=0)
    ezq_flow_recheck: float = Field(default=c.FLOW_RECHECK_S, gt=0)
    ezq_flow_default_max_tokens: int = Field(default=c.FLOW_DEFAULT_MAX_TOKENS, ge=1)
    ezq_priority_aging: float = Field(default=c.PRIORITY_AGING_S, gt=0)
    ezq_budget_unpriced: Literal["allow", "deny"] = "allow"
    # The sweep purges content of jobs that ended longer ago than this (unset: never).
    ezq_retention_days: int | None = Field(default=None, ge=1, le=36_600)
    ezq_api_tokens: SecretStr | None = None
    # The largest HTTP request body; default: four times EZQ_MAX_REQUEST_BYTES, room for
    # JSON's escapes (``\u00e9`` is six bytes for two) and the fields around the messages.
    ezq_api_max_body_bytes: int | None = Field(default=None, ge=1_000)
    # Batch input files (POST /v1/files, ``ezq batch submit``): OpenAI's limits by default.
    ezq_batch_max_file_bytes: int = Field(default=c.BATCH_MAX_FILE_BYTES, ge=1_000)
    ezq_batch_max_lines: int = Field(default=c.BATCH_MAX_LINES, ge=1)
    ezq_log_level: str = "INFO"
    ezq_log_format: Literal["text", "json"] = "text"
    # Metrics: which tenants get a label of their own (see service/metrics/labels.py), and
    # how long the Postgres gauges are reused between scrapes.
    ezq_metrics_tenants: str = ""
    ezq_metrics_max_tenants: int = Field(default=c.METRICS_MAX_TENANTS, ge=0, le=10_000)
    ezq_metrics_max_models: int = Field(default=c.METRICS_MAX_MODELS, ge=0, le=10_000)
    ezq_metrics_db_ttl: float = Field(default=c.METRICS_DB_TTL_S, ge=0)
    # Live tokens: the Redis holding each running job's stream of deltas (default: the
    # broker's, when it is Redis; "off" turns live tokens off), and its tuning.
    ezq_live_redis_url: str | None = None
    ezq_live_flush_interval: float = Field(default=c.LIVE_FLUSH_INTERVAL_S, gt=0, le=5)
    ezq_live_maxlen: int = Field(default=c.LIVE_STREAM_MAXLEN, ge=100)
    ezq_live_ttl: float = Field(default=c.LIVE_TTL_S, ge=10)
    ezq_live_ended_ttl: float = Field(default=c.LIVE_ENDED_TTL_S, ge=1)
    ezq_live_heartbeat: float = Field(default=c.LIVE_HEARTBEAT_S, gt=0, le=300)

    # Webhooks: comma-separated whsec_ secrets (all sign, for rotation) and CIDRs that the
    # address policy lets through although they are loopback, private or link-local.
    webhook_secret: SecretStr | None = None
    webhook_allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    ezq_webhook_timeout: float = Field(default=c.WEBHOOK_TIMEOUT_S, gt=0)
    ezq_webhook_max_attempts: int = Field(default=c.WEBHOOK_MAX_ATTEMPTS, ge=1, le=100)
    ezq_webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = c.WEBHOOK_RETRY_SCHEDULE_S
    ezq_webhook_max_response_bytes: int = Field(
        default=c.WEBHOOK_MAX_RESPONSE_BYTES, ge=0, le=1_000_000
    )
    ezq_webhook_threads: int = Field(default=c.WEBHOOK_LOCAL_THREADS, ge=0, le=64)
    ezq_webhook_keepalive_s: float = Field(default=c.WEBHOOK_KEEPALIVE_S, ge=0, le=60)
    # Also sign tenants' events with WEBHOOK_SECRET itself, while their receivers move to
    # their tenant's own secret (see README, Webhooks).
    ezq_webhook_shared_signature: bool = False

    @field_validator("ezq_worker_cpu", mode="before")
    @classmethod
    def _worker_cpu(cls, value: object) -> object:
        return None if value is None else worker_cpu_choice(value)

    @field_validator("ezrouter_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("ezrouter_anthropic_base_url")
    @classmethod
    def _optional_http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return _check_http_url(value.strip())

    @field_validator("ezq_surface_defaults", mode="before")
    @classmethod
    def _surface_defaults(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = []
        for item in (p.strip() for p in value.split(",")):
            if not item:
                continue
            pattern, sep, surface = (x.strip() for x in item.partition("="))
            if not sep or not pattern or surface not in c.SURFACES:
                raise ValueError(
                    f"{item!r} is not pattern=surface with surface one of {', '.join(c.SURFACES)}"
                )
            pairs.append((pattern, surface))
        return tuple(pairs)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        # SQLAlchemy needs the driver named; people paste plain postgres URLs.
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if value.startswith(prefix):
                return _check_postgres_url("postgresql+psycopg://" + value[len(prefix) :])
        raise ValueError("must be a postgresql:// URL")

    @field_validator("ezq_live_redis_url")
    @classmethod
    def _live_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "off" or value.startswith(REDIS_SCHEMES):
            return value
        raise ValueError("must be a redis:// or rediss:// URL, or off")

    @field_validator("celery_broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if not value.startswith(REDIS_SCHEMES + AMQP_SCHEMES):
            raise ValueError(
                "must be a Redis (redis://, rediss://) or RabbitMQ (amqp://, amqps://,"
                " pyamqp://) URL"
            )
        return value

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        # A lease must survive a couple of missed beats, or a busy worker loses live jobs.
        if self.ezq_heartbeat_interval * 3 > self.ezq_lease_seconds:
            raise ValueError("EZQ_HEARTBEAT_INTERVAL must be at most a third of EZQ_LEASE_SECONDS")
        return self

    @model_validator(mode="after")
    def _sweeps_close_enough_to_take_over(self) -> Settings:
        # A sweep takes leases over only when the one before ran less than a lease less a
        # heartbeat ago (``sweep.continuity_window``): sweeps further apart than that never
        # would, and a dead worker's jobs would stay running for ever.
        window = self.ezq_lease_seconds - self.ezq_heartbeat_interval
        if self.ezq_sweep_interval * 2 > window:
            raise ValueError(
                f"EZQ_SWEEP_INTERVAL ({self.ezq_sweep_interval:g} s) must be at most half of"
                f" EZQ_LEASE_SECONDS - EZQ_HEARTBEAT_INTERVAL ({window:g} s), or 0 (off):"
                " a sweep takes a dead worker's jobs over only when the one before ran"
                " less than that ago"
            )
        return self

    @model_validator(mode="after")
    def _live_stream_outlasts_an_attempt(self) -> Settings:
        # An attempt sets its stream's TTL once, at its first write; later writes never
        # make the stream again. A stream that expired mid-attempt would drop the rest of
        # the attempt's tokens without a word.
        longest = (
            self.ezq_gateway_attempt_deadline
            + self.ezq_gateway_read_timeout
            + self.ezq_gateway_connect_timeout
        )
        if self.live_redis_url is not None and self.ezq_live_ttl <= longest:
            raise ValueError(
                f"EZQ_LIVE_TTL ({self.ezq_live_ttl:g} s) must be longer than an attempt can"
                f" last: EZQ_GATEWAY_ATTEMPT_DEADLINE + EZQ_GATEWAY_READ_TIMEOUT +"
                f" EZQ_GATEWAY_CONNECT_TIMEOUT = {longest:g} s"
            )
        return self

    @field_validator("ezq_log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("ezq_log_format", mode="before")
    @classmethod
    def _log_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        # Never echo a secret back: errors name its position in the list, not its value.
        parts = [p.strip() for p in (value.get_secret_value() if value else "").split(",")]
        parts = [p for p in parts if p]
        if not parts:
            return None
        for number, part in enumerate(parts, start=1):
            problem = _webhook_secret_problem(part)
            if problem:
                raise ValueError(f"secret {number} of {len(parts)} {problem}")
        return SecretStr(",".join(parts))

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        networks = []
        for part in (p.strip() for p in value.split(",")):
            if part:
                try:
                    networks.append(ip_network(part))
                except ValueError as exc:
                    raise ValueError(str(exc)) from None
        return tuple(networks)

    @field_validator("ezq_webhook_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return tuple(float(p) for p in value.split(",") if p.strip())
        except ValueError:
            raise ValueError("must be comma-separated seconds, e.g. 5,300,1800") from None

    @field_validator("ezq_worker_gc_thresholds", mode="before")
    @classmethod
    def _gc_thresholds(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            raise ValueError(
                f"{value!r} is not three comma-separated whole numbers, e.g. 50000,20,100"
            )
        first, second, third = (int(p) for p in parts)
        if second < 1 or third < 1:
            raise ValueError(
                "the second and third thresholds must be at least 1"
                " (the first may be 0: no automatic collection)"
            )
        # gc.set_threshold takes C ints: a larger count would fail the worker's start.
        if max(first, second, third) > c.GC_THRESHOLD_MAX:
            raise ValueError(f"each threshold must be at most {c.GC_THRESHOLD_MAX}")
        return (first, second, third)

    @field_validator("ezq_webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("must hold at least one delay")
        if any(not math.isfinite(v) or v < 0 for v in value):
            raise ValueError("delays must be finite and not negative")
        return value

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic surface's root: the setting, or the OpenAI base URL's root +
        ``/anthropic`` (``https://www.ezrouter.dev/v1`` gives ``…/anthropic``)."""
        if self.ezrouter_anthropic_base_url:
            return self.ezrouter_anthropic_base_url
        root = self.ezrouter_base_url.removesuffix("/v1")
        return f"{root}/anthropic"

    def default_surface(self, model: str) -> str:
        """The surface of a request that names none: the first matching pattern's, or auto."""
        for pattern, surface in self.ezq_surface_defaults:
            if fnmatch.fnmatchcase(model, pattern):
                return surface
        return "auto"

    @property
    def result_backend(self) -> str:
        # With RabbitMQ, results travel back as replies (``rpc://``): Celery has no AMQP
        # result store. Postgres holds every job's outcome either way.
        if self.celery_result_backend:
            return self.celery_result_backend
        return self.celery_broker_url if self.broker_is_redis else "rpc://"

    @property
    def live_redis_url(self) -> str | None:
        """Where live tokens go, or None when they are off."""
        if self.ezq_live_redis_url is not None:
            return None if self.ezq_live_redis_url == "off" else self.ezq_live_redis_url
        return self.celery_broker_url if self.broker_is_redis else None

    @property
    def lease_seconds(self) -> float:
        return self.ezq_lease_seconds

    @property
    def longest_hold_seconds(self) -> float:
        # The deadline is checked between chunks, so an attempt can overrun it by one read
        # timeout (and a connect), and recording its outcome may wait out a database outage.
        # Past this, a heartbeat stops renewing the lease: the thread is stuck.
        return (
            self.ezq_gateway_attempt_deadline
            + self.ezq_gateway_read_timeout
            + self.ezq_gateway_connect_timeout
            + self.ezq_record_retry_for
            + c.LEASE_HOLD_MARGIN_S
        )

    @property
    def broker_is_redis(self) -> bool:
        return self.celery_broker_url.startswith(REDIS_SCHEMES)

    @property
    def max_countdown_seconds(self) -> float:
        # A message held back longer than the visibility timeout would come back as a
        # duplicate; longer waits are parked in the database for the sweep.
        return self.ezq_broker_visibility_timeout / 3

    @property
    def api_max_body_bytes(self) -> int:
        return self.ezq_api_max_body_bytes or c.API_BODY_LIMIT_FACTOR * self.ezq_max_request_bytes

    def api_tokens(self, *, required: bool = False) -> list[str]:
        """The bearer tokens the HTTP interface accepts (``EZQ_API_TOKENS``, comma-separated)."""
        raw = self.ezq_api_tokens.get_secret_value() if self.ezq_api_tokens else ""
        tokens = [t.strip() for t in raw.split(",") if t.strip()]
        if required and not tokens:
            raise ConfigError(
                "EZQ_API_TOKENS: not set; the HTTP interface needs at least one token"
            )
        if any(len(t) < 16 for t in tokens):
            raise ConfigError("EZQ_API_TOKENS: every token must be at least 16 characters")
        return tokens

    def metrics_tenants(self) -> tuple[str, ...]:
        """``EZQ_METRICS_TENANTS``, comma-separated: the tenants labelled by name."""
        return tuple(t.strip() for t in self.ezq_metrics_tenants.split(",") if t.strip())

    def require_api_key(self) -> str:
        """The gateway key, or a ConfigError naming the variable."""
        if self.ezrouter_api_key is None or not self.ezrouter_api_key.get_secret_value():
            raise ConfigError("EZROUTER_API_KEY: not set; the worker needs it to call ezrouter")
        return self.ezrouter_api_key.get_secret_value()

    def webhook_signing_secrets(self) -> tuple[str, ...]:
        """The configured ``whsec_`` secrets, in order; empty when webhooks are off."""
        if self.webhook_secret is None:
            return ()
        return tuple(self.webhook_secret.get_secret_value().split(","))

    @property
    def webhook_lease_seconds(self) -> float:
        return self.ezq_webhook_timeout + c.WEBHOOK_LEASE_MARGIN_S


def _check_http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


def _check_postgres_url(url: str) -> str:
    """Parse ``url`` now, so that a typo is one line here rather than a traceback later."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018  (parsing the port is the check)
    except (ArgumentError, ValueError):
        raise ValueError(
            "is not a valid URL: check the host (IPv6 in [brackets]), that the port is a"
            " number, and that special characters in the password are %-escaped"
        ) from None
    if not parsed.database:
        raise ValueError("names no database, e.g. postgresql://user@host:5432/ezq")
    return url


def _webhook_secret_problem(secret: str) -> str | None:
    prefix = "whsec_"
    if not secret.startswith(prefix):
        return f"must start with {prefix!r}"
    body = secret[len(prefix) :]
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"is not base64 after {prefix!r}"
    if len(key) < c.WEBHOOK_SECRET_MIN_BYTES:
        return f"decodes to {len(key)} bytes; at least {c.WEBHOOK_SECRET_MIN_BYTES} are needed"
    return None


def worker_cpu_choice(value: object) -> int | Literal["auto"] | None:
    """A worker's CPU as ``EZQ_WORKER_CPU`` or ``ezq worker --cpu`` gives it: a CPU number,
    ``auto``, or None for blank (not pinned); ValueError for anything else."""
    if isinstance(value, int) and value >= 0:
        return value
    text = str(value).strip()
    if text == "auto":
        return "auto"
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ValueError("expected a CPU number (0 or more) or 'auto'")
    return int(text)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    name = str(first["loc"][0]).upper() if first["loc"] else "settings"
    value = first.get("input")
    # Never echo a secret, nor a URL (its user-info may hold a password).
    secret = any(word in name for word in ("KEY", "SECRET", "PASSWORD", "TOKEN", "URL"))
    hidden = secret or isinstance(value, dict) or value is None
    shown = "" if hidden else f" (got {value!r})"
    return f"{name}: {first['msg']}{shown}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; a bad variable raises one ConfigError line."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
