"""What a worker process knows of its own claims: which jobs it runs, which it gave up, and
whether a claim that raised may have been committed (in doubt), settled only at a moment
when no claim of it is under way."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from service.worker.liveness import ActiveJobs


def test_a_claim_that_raises_is_in_doubt_until_settled() -> None:
    active = ActiveJobs()
    with active.claiming():
        pass
    assert not active.in_doubt
    with pytest.raises(ConnectionError), active.claiming():
        raise ConnectionError("the answer was lost")
    assert active.in_doubt
    with active.settling():
        pass
    assert not active.in_doubt


def test_a_settling_that_fails_leaves_the_claims_in_doubt() -> None:
    active = ActiveJobs()
    with pytest.raises(ConnectionError), active.claiming():
        raise ConnectionError("the answer was lost")
    with pytest.raises(ConnectionError), active.settling():
        raise ConnectionError("the database is still away")
    assert active.in_doubt


def test_settling_keeps_the_jobs_run_and_given_up_not_those_ended() -> None:
    active = ActiveJobs()
    running, given_up, ended = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for job in (running, given_up, ended):
        active.add(job)
    active.abandon(given_up)
    active.discard(ended)
    with active.settling() as kept:
        assert kept == {running, given_up}
    assert active.renewable(longest_hold_s=3600) == [running]
    # Claimed again: its earlier attempt was taken over, nothing of it is left to keep.
    active.add(given_up)
    active.discard(given_up)
    with active.settling() as kept:
        assert kept == {running}


def test_settling_waits_for_the_claims_under_way_and_holds_new_ones_back() -> None:
    active = ActiveJobs()
    claimed, job = uuid.uuid4(), uuid.uuid4()
    in_claim, finish_claim = threading.Event(), threading.Event()
    settled, kept_seen = threading.Event(), []
    order: list[str] = []

    def claim() -> None:
        with active.claiming():
            in_claim.set()
            finish_claim.wait(10)
            active.add(claimed)  # committed and known before the settling may look
            order.append("first claim ended")

    def settle() -> None:
        with active.settling() as kept:
            kept_seen.append(kept)
            order.append("settled")
            settled.wait(10)

    def claim_later() -> None:
        with active.claiming():
            order.append("later claim")
            active.add(job)

    first = threading.Thread(target=claim)
    first.start()
    assert in_claim.wait(10)
    settler = threading.Thread(target=settle)
    settler.start()
    # The settling waits on the claim under way: nothing has been settled yet.
    assert not kept_seen
    finish_claim.set()
    first.join(10)
    _wait_for(lambda: bool(kept_seen))
    assert kept_seen == [{claimed}]
    later = threading.Thread(target=claim_later)
    later.start()
    later.join(0.2)  # the time it is given to (wrongly) claim while the settling runs
    order.append("settling released")
    settled.set()
    settler.join(10)
    later.join(10)
    assert order == ["first claim ended", "settled", "settling released", "later claim"]


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
