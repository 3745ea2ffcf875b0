"""The worker process's garbage collector thresholds.

CPython runs its cyclic collector on the youngest generation after every 700 net container
allocations, on the middle one after ten of those, and a full collection (the whole heap,
every thread stopped) after ten of the middle's once the objects promoted since the last
one reach a quarter of the heap. A worker's jobs keep their objects (the request, the
SDK's and httpx's per-call state, the task's message) for as long as their gateway call
lasts, so with many calls in flight most of them outlive two young collections, are
promoted to the oldest generation, and bring on full collections every few seconds. At
1,000 calls in flight a 30 s benchmark run saw nine of them, 16 to 416 ms each, and 2.4 s
of the process's time in the collector (0.8 ms a job); at 64 in flight 1.1 s.

Almost none of it finds garbage (refcounting frees a job's objects; at 0 ms and 64 in
flight a run's collections freed about 2,300 objects in all), so the worker collects its
youngest generation after 50,000 allocations instead, the middle one after 20 of those
and the oldest after 100 of the middle's: young collections stay as cheap per object, and
the run above has no full collection at all. Cyclic garbage waits longer to be freed, at
most 50,000 young objects (a few MB). ``EZQ_WORKER_GC_THRESHOLDS`` sets other values
(``700,10,10`` is CPython's).
"""

from __future__ import annotations

import gc


def set_thresholds(thresholds: tuple[int, int, int]) -> tuple[int, int, int]:
    """Apply ``thresholds`` to this process's collector; the thresholds it now has."""
    gc.set_threshold(*thresholds)
    first, second, third = gc.get_threshold()
    return first, second, third
