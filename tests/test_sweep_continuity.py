"""The sweep takes leases over only when the database has been there long enough for live
workers to renew them: after an outage as long as a lease less a beat (a failover), every
live lease looks expired, and the first sweep after it must leave them to their workers."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service.config import get_settings
from service.worker import sweep as sweep_module

pytestmark = pytest.mark.usefixtures("service_env")


def _sweep_after_a_gap(engine: Engine, gap_s: float) -> bool:
    """Whether a sweep whose previous run was ``gap_s`` ago took leases over, at the
    defaults: 30 s leases, a beat every 5 s, a sweep every 10 s."""
    settings = get_settings().model_copy(
        update={
            "ezq_lease_seconds": 30.0,
            "ezq_heartbeat_interval": 5.0,
            "ezq_sweep_interval": 10.0,
        }
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sweep_runs (name, last_run_at)"
                " VALUES ('sweep', now() - make_interval(secs => :gap))"
                " ON CONFLICT (name) DO UPDATE SET last_run_at = excluded.last_run_at"
            ),
            {"gap": gap_s},
        )
    report = sweep_module.sweep(settings, worker="test", force=True)
    assert report is not None
    return not report.skipped_takeovers


def test_no_takeover_right_after_an_outage_as_long_as_a_lease_less_a_beat(
    own_database_settings: tuple[str, Engine],
) -> None:
    _, engine = own_database_settings
    # Down 26 s: a live worker's last renewal may be 31 s old, its lease expired.
    assert not _sweep_after_a_gap(engine, 26.0)
    # Down 20 s: no live lease can have expired (renewed at most 25 s ago).
    assert _sweep_after_a_gap(engine, 20.0)
