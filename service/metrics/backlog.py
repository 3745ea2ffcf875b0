"""Gauges computed from Postgres when scraped: the backlog as the database sees it.

Postgres is the truth: the broker may hold duplicates, delayed retries or nothing at all
(a lost message), while ``jobs.status`` says what is waiting and what runs. Each scrape
runs the ``ezq status`` queries (cached for ``EZQ_METRICS_DB_TTL`` seconds, so several
scrapers cost one query).

A tenant and model pair, once known, reads 0 in the count gauges when it has no job, rather
than disappearing: known are the pairs with unfinished jobs at an earlier scrape of this
process, and, from its first scrape, those with usage today or yesterday (UTC; read from
``usage_rollup_daily`` once). At most as many as the label caps allow are kept, the pairs
seen longest ago dropped first. With no pair known (a fresh database), the count gauges
have no series. ``ezq_oldest_queued_job_age_seconds`` has no 0: it is absent for a pair
with nothing queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.metrics.labels import OTHER, TenantLabels

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_GAUGES = {
    "queued": ("ezq_queue_depth", "Jobs queued and not started, from Postgres."),
    "running": ("ezq_jobs_in_flight", "Jobs with a gateway call in flight, from Postgres."),
    "retrying": ("ezq_jobs_retrying", "Jobs waiting out a retry backoff, from Postgres."),
    "throttled": (
        "ezq_jobs_throttled",
        "Queued jobs held back by an earlier unfinished turn of their conversation.",
    ),
}


class BacklogCollector(Collector):
    """Reads ``service.db.status.snapshot`` and exposes it as gauges."""

    def __init__(self, ttl_seconds: float, tenants: TenantLabels | None = None) -> None:
        self._ttl = ttl_seconds
        self._tenants = tenants
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None
        # (tenant label, model label) pairs that read 0 when they have no job, oldest first.
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._seeded = False

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self._ttl:
                self._cached = (time.monotonic(), self._read())
            yield from self._cached[1]

    def _read(self) -> list[Metric]:
        from service.config import get_settings
        from service.db.session import transaction
        from service.db.status import snapshot

        up = GaugeMetricFamily(
            "ezq_metrics_database_up", "1 if the last scrape could read Postgres, else 0."
        )
        try:
            with transaction() as session:
                snap = snapshot(session)
                recent = [] if self._seeded else _recent_pairs(session)
        except Exception as exc:  # reported as a gauge, not raised: scrapes must answer
            log.warning("metrics: cannot read the backlog from Postgres: %s", type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        settings = get_settings()
        # The tenants and models with the most unfinished jobs get their own label (rows
        # come ordered by size); the rest add up under "other".
        labels = self._tenants or TenantLabels(
            settings.metrics_tenants(), settings.ezq_metrics_max_tenants
        )
        models = TenantLabels((), settings.ezq_metrics_max_models)
        tenant_cap = len(settings.metrics_tenants()) or settings.ezq_metrics_max_tenants
        # As many pairs as the labels allow: tenants, none and other by models and other.
        most = (tenant_cap + 2) * (settings.ezq_metrics_max_models + 1)
        counts: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
        oldest: dict[tuple[str, str], float] = {}
        for row in snap.backlog:
            key = (labels(row.tenant), models(row.model))
            for field in _GAUGES:
                counts[field][key] += getattr(row, field)
            if row.oldest_queued_at is not None:
                age = (snap.now - row.oldest_queued_at).total_seconds()
                oldest[key] = max(age, oldest.get(key, 0.0))
            self._remember(key, most)
        if not self._seeded:
            # Before this scrape's pairs, so that they stay the most recent.
            for tenant, model in recent:
                key = (labels(tenant), models(model))
                if key not in self._known:
                    self._known[key] = None
                    self._known.move_to_end(key, last=False)
            while len(self._known) > most:
                self._known.popitem(last=False)
            self._seeded = True
        # Labels are handed out anew at each scrape: once some pair spilled into "other"
        # (more tenants or models than the caps), a known pair may be counted there now,
        # and a 0 under its own name would say it has nothing. No zeros then.
        spilled = any(
            model == OTHER or (tenant == OTHER and not settings.metrics_tenants())
            for tenant, model in counts["queued"].keys()
            | counts["running"].keys()
            | counts["retrying"].keys()
            | counts["throttled"].keys()
        )
        metrics: list[Metric] = [up]
        for field, (name, text) in _GAUGES.items():
            gauge = GaugeMetricFamily(name, text, labels=["tenant", "model"])
            values = {} if spilled else {key: 0.0 for key in self._known}
            values.update(counts[field])
            for (tenant, model), value in sorted(values.items()):
                gauge.add_metric([tenant, model], value)
            metrics.append(gauge)
        ages = GaugeMetricFamily(
            "ezq_oldest_queued_job_age_seconds",
            "Age of the oldest queued job, from Postgres (absent when nothing is queued).",
            labels=["tenant", "model"],
        )
        for (tenant, model), seconds in sorted(oldest.items()):
            ages.add_metric([tenant, model], seconds)
        metrics.append(ages)
        webhooks = GaugeMetricFamily(
            "ezq_webhook_backlog", "Webhook deliveries pending (not yet delivered or failed)."
        )
        webhooks.add_metric([], snap.webhook_backlog)
        metrics.append(webhooks)
        sweep = GaugeMetricFamily(
            "ezq_sweep_age_seconds",
            "Seconds since a worker last ran the sweep, from Postgres (absent: never).",
        )
        if snap.last_sweep_at is not None:
            sweep.add_metric([], (snap.now - snap.last_sweep_at).total_seconds())
        metrics.append(sweep)
        return metrics

    def _remember(self, key: tuple[str, str], most: int) -> None:
        self._known[key] = None
        self._known.move_to_end(key)
        while len(self._known) > most:
            self._known.popitem(last=False)


def _recent_pairs(session: Session) -> list[tuple[str | None, str]]:
    """Tenants and models with usage today or yesterday (UTC), busiest first: a fresh
    process's known pairs. Reads the daily rollup (a few hundred rows a day, by its index)."""
    from sqlalchemy import text

    rows = session.execute(
        text(
            "SELECT tenant, model FROM usage_rollup_daily"
            " WHERE day >= (now() AT TIME ZONE 'UTC')::date - 1"
            " GROUP BY tenant, model HAVING sum(jobs) > 0"
            " ORDER BY sum(jobs) DESC, tenant NULLS FIRST, model"
        )
    ).all()
    return [(row[0], row[1]) for row in rows]


def collector_for_settings() -> BacklogCollector:
    from service.config import get_settings

    return BacklogCollector(get_settings().ezq_metrics_db_ttl)
