"""The short fault suite: a mixed workload survives each fault with every invariant kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import chaos


@pytest.mark.timeout(900)
def test_short_fault_suite_keeps_every_invariant(tmp_path: Path) -> None:
    """Worker killed mid-call and between answer and save, flushed broker, cut and stopped
    Postgres, poison messages: no job lost, none doubled, histories in order, one attempt
    row per gateway call, one webhook-id per event."""
    phases, invariants = chaos.run(
        faults=chaos.SHORT_FAULTS,
        jobs_per_phase=20,
        phase_timeout=180,
        concurrency=8,
        workdir=tmp_path,
        settings=chaos.FAST_RECOVERY,
    )

    assert invariants == {name: 0 for name in invariants}, invariants
    assert [(p.name, p.lost, p.duplicates) for p in phases] == [
        (f.__name__, 0, 0) for f in chaos.SHORT_FAULTS
    ]
    assert all(p.recovery_s is not None and p.recovery_s < 120 for p in phases), [
        (p.name, p.recovery_s) for p in phases
    ]
