"""What a worker process knows of its own claims: which attempts it runs, which it gave up,
and whether a claim that lost its connection may have been committed (in doubt), settled
only at a moment when no claim of it is under way."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy.exc import OperationalError

from service.worker.liveness import ActiveJobs

LOST = OperationalError("SELECT ezq_claim_job(...)", {}, Exception("server closed the connection"))


def _raise_in_claim(active: ActiveJobs, exc: BaseException) -> None:
    with pytest.raises(type(exc)), active.claiming():
        raise exc


def test_a_claim_that_lost_its_connection_is_in_doubt_until_settled() -> None:
    active = ActiveJobs()
    with active.claiming():
        pass
    _raise_in_claim(active, ValueError("a bug, not a lost answer"))
    assert not active.in_doubt
    _raise_in_claim(active, LOST)
    assert active.in_doubt
    with active.settling(wait_s=1, doubt_s=0) as kept:
        assert kept == set()
    assert not active.in_doubt


def test_a_settling_that_fails_leaves_the_claims_in_doubt() -> None:
    active = ActiveJobs()
    _raise_in_claim(active, LOST)
    with pytest.raises(ConnectionError), active.settling(wait_s=1, doubt_s=0):
        raise ConnectionError("the database is still away")
    assert active.in_doubt


def test_a_doubt_stays_until_a_settling_begins_its_window_after_it() -> None:
    """A claim cut off may still commit in its backend: settlings go on, beat after beat,
    until one begins ``doubt_s`` after the claim raised."""
    active = ActiveJobs()
    _raise_in_claim(active, LOST)
    with active.settling(wait_s=1, doubt_s=3600):
        pass
    assert active.in_doubt
    with active.settling(wait_s=1, doubt_s=0):
        pass
    assert not active.in_doubt


def test_settling_keeps_the_jobs_run_and_given_up_not_those_ended() -> None:
    active = ActiveJobs()
    running, given_up, ended = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for job in (running, given_up, ended):
        active.add(job, 1)
    active.abandon(given_up, 1)
    active.discard(ended, 1)
    with active.settling(wait_s=1, doubt_s=0) as kept:
        assert kept == {running, given_up}
    assert active.renewable(longest_hold_s=3600) == [running]
    # Claimed again: its attempt given up was taken over, nothing of it is left to keep.
    active.add(given_up, 2)
    active.discard(given_up, 2)
    with active.settling(wait_s=1, doubt_s=0) as kept:
        assert kept == {running}


def test_a_thread_that_ends_late_leaves_a_later_attempt_of_its_job_on_the_list() -> None:
    active = ActiveJobs()
    job = uuid.uuid4()
    active.add(job, 1)  # a thread stuck past its lease; the sweep took the job over
    active.add(job, 2)  # claimed again by another thread of this process
    active.abandon(job, 1)  # the stuck thread gives up
    assert active.renewable(longest_hold_s=3600) == [job]
    active.discard(job, 2)
    with active.settling(wait_s=1, doubt_s=0) as kept:
        assert kept == {job}  # attempt 1 given up: only the sweep may end it


def test_settling_waits_for_the_claims_under_way_and_holds_new_ones_back() -> None:
    active = ActiveJobs()
    claimed, job = uuid.uuid4(), uuid.uuid4()
    in_claim, finish_claim = threading.Event(), threading.Event()
    settled, kept_seen, seen = threading.Event(), [], threading.Event()
    order: list[str] = []

    def claim() -> None:
        with active.claiming():
            in_claim.set()
            finish_claim.wait(10)
            active.add(claimed, 1)  # committed and known before the settling may look
            order.append("first claim ended")

    def settle() -> None:
        with active.settling(wait_s=10, doubt_s=0) as kept:
            kept_seen.append(kept)
            order.append("settled")
            seen.set()
            settled.wait(10)

    def claim_later() -> None:
        with active.claiming():
            order.append("later claim")
            active.add(job, 1)

    first = threading.Thread(target=claim)
    first.start()
    assert in_claim.wait(10)
    settler = threading.Thread(target=settle)
    settler.start()
    finish_claim.set()
    first.join(10)
    assert seen.wait(10)
    assert kept_seen == [{claimed}]
    later = threading.Thread(target=claim_later)
    later.start()
    later.join(0.2)  # the time it is given to (wrongly) claim while the settling runs
    order.append("settling released")
    settled.set()
    settler.join(10)
    later.join(10)
    assert order == ["first claim ended", "settled", "settling released", "later claim"]


def test_a_claim_that_does_not_end_puts_the_settling_off_and_blocks_nothing() -> None:
    active = ActiveJobs()
    _raise_in_claim(active, LOST)
    in_claim, finish_claim = threading.Event(), threading.Event()

    def hanging_claim() -> None:
        with active.claiming():
            in_claim.set()
            finish_claim.wait(10)

    hanging = threading.Thread(target=hanging_claim)
    hanging.start()
    assert in_claim.wait(10)
    with active.settling(wait_s=0.1, doubt_s=0) as kept:
        assert kept is None
    assert active.in_doubt  # for the next beat
    with active.claiming():  # other claims go on meanwhile
        pass
    finish_claim.set()
    hanging.join(10)
