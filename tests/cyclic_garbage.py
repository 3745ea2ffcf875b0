"""What a call leaves for the cyclic garbage collector, for tests that say it leaves
nothing (a worker's collector pauses every thread when it runs)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def left_in_cycles(call: Callable[[], T]) -> tuple[T, list[str]]:
    """Run ``call`` with the collector off and return its result and the type names of
    the objects only the collector could free (dicts left out: they belong to objects)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        result = call()
        gc.collect()
        left = sorted({type(o).__qualname__ for o in gc.garbage if not isinstance(o, dict)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    return result, left
