"""One asyncio event loop per process, in a thread of its own, for the gateway's streams.

A worker thread that blocks on a socket hands the GIL over on every read; a thousand of
them streaming at once spend more time handing it over than reading. So every gateway
call of the process runs as a task on this one loop, and the calling thread (a Celery
worker thread) sleeps on the call's future until it ends: one wake-up per call instead of
one per chunk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread; ``run`` a coroutine on it from any other."""

    def __init__(self, name: str = "ezq-gateway-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        The coroutine sees the caller's context variables (a job's live-tokens attempt is
        one), as if it ran in the calling thread.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        context = contextvars.copy_context()

        def start() -> None:
            if not future.set_running_or_notify_cancel():
                coro.close()
                return
            task = self.loop.create_task(coro, context=context)
            task.add_done_callback(lambda done: _copy_outcome(done, future))

        self.loop.call_soon_threadsafe(start)
        return future.result()

    def close(self, finish: Coroutine[Any, Any, Any] | None = None) -> None:
        """Cancel the calls still running (their callers get ``CancelledError``), run
        ``finish`` (closing what lives on the loop), then stop the loop and its thread."""
        if self.loop.is_closed() or not self._thread.is_alive():
            if finish is not None:
                finish.close()
            return
        self.run(_shutdown(finish))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


async def _shutdown(finish: Coroutine[Any, Any, Any] | None) -> None:
    current = asyncio.current_task()
    running = [task for task in asyncio.all_tasks() if task is not current]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    if finish is not None:
        await finish


def _copy_outcome(task: asyncio.Task[T], future: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        # The future is already running, so it cannot be cancelled; its caller gets the
        # same exception as if it had been.
        future.set_exception(concurrent.futures.CancelledError())
        return
    error = task.exception()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())
