"""Log lines written by a thread of their own, not by the threads that log them.

A worker runs up to a thousand jobs on as many threads, each logging a few lines a job. A
logging handler writes under its own lock, and the write releases the GIL: the thread
holding the lock must then wait its turn for the GIL (milliseconds, on a busy process)
while every other thread that logs waits for the lock. Measured on one worker holding
1,000 gateway calls, a job's "succeeded" line took 29 to 80 ms on average (p90 87 to 200 ms),
time a thread is not free for the next job. Here a thread that logs only puts the record
on a queue; one thread writes them all, in the order they were logged, through the
handlers the logger had (their filters and formatters, redaction included, run there).

A log destination that stops reading (a full pipe) no longer stops the jobs: records wait
in the queue, up to ``capacity`` of them, and only then does a thread that logs wait.
Records still queued when the process is killed outright are lost; ``stop`` (at exit)
writes what is queued first.

The writer wakes for a line, lets the lines of the next ``LINGER_S`` gather (unless one of
them is a WARNING or worse: a problem reaches the log at once, with the lines before it),
and writes them to each stream in one write: at a few hundred jobs a second a worker logs a line
every couple of milliseconds, and waking a thread (and handing it the GIL) for every one
of them, then a write call each, costs the jobs' threads more than the writing itself.

Not the standard library's ``QueueHandler`` and ``QueueListener`` as they are: on Python
3.11 the handler folds the traceback into the message (a JSON line loses its
``exception`` field) and drops a record, with a traceback on stderr, when a bounded queue
is full; the listener's ``stop`` waits for ever on a destination that stopped reading.
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import threading

_STOP = object()
# How long the writer lets lines below WARNING gather once one has come, before writing
# them together: how late such a line may be in the log, and what keeps a busy worker's
# log at a few dozen writes a second. A WARNING or worse is written at once.
LINGER_S = 0.02
_TRACEBACKS = logging.Formatter()


class _Enqueue(logging.Handler):
    """The logger's one handler while its writer runs: queues a copy of each record."""

    def __init__(self, records: queue.Queue[object], urgent: threading.Event) -> None:
        super().__init__()
        self._records = records
        self._urgent = urgent

    def handle(self, record: logging.LogRecord) -> bool:
        # No lock: the queue has its own, never held across I/O.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._records.put(_frozen(record))
            if record.levelno >= logging.WARNING:
                self._urgent.set()  # a problem is written at once, with what came before
        except Exception:
            self.handleError(record)


def _frozen(record: logging.LogRecord) -> logging.LogRecord:
    """The record as it reads now: its arguments may be objects that change once the call
    returns, and a traceback cannot be formatted later on another thread. The traceback is
    kept apart from the message, as text, so that a JSON line still has its own field."""
    frozen = copy.copy(record)
    frozen.msg = record.getMessage()
    frozen.args = None
    if record.exc_info:
        if not frozen.exc_text:
            frozen.exc_text = _TRACEBACKS.formatException(record.exc_info)
        frozen.exc_info = None
    return frozen


class LogWriter:
    """Moves ``logger``'s handlers behind a queue and a thread that writes for them."""

    def __init__(
        self, logger: logging.Logger, *, capacity: int = 10_000, linger: float = LINGER_S
    ) -> None:
        self.logger = logger
        self._linger = linger
        self._urgent = threading.Event()
        self._records: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._handlers: list[logging.Handler] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._handlers = list(self.logger.handlers)
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._thread.start()
        # One assignment: a record being logged meanwhile sees either list, never neither.
        self.logger.handlers = [_Enqueue(self._records, self._urgent)]

    def stop(self, timeout: float = 5.0) -> None:
        """Give the logger its handlers back and write what is queued (for up to
        ``timeout`` seconds, should the destination have stopped reading)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self.logger.handlers = list(self._handlers)
        try:
            self._records.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)

    def _write(self) -> None:
        while True:
            batch = [self._records.get()]
            if batch[0] is not _STOP and self._linger > 0:
                self._urgent.wait(self._linger)
            self._urgent.clear()
            while True:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if isinstance(r, logging.LogRecord)]
            for handler in self._handlers:
                wanted = [r for r in records if r.levelno >= handler.level]
                if (
                    isinstance(handler, logging.StreamHandler)
                    and type(handler) in _STREAMS
                    and handler.stream is not None  # a file not opened yet (``delay``)
                    and len(wanted) > 1
                ):
                    _write_together(handler, wanted)
                else:
                    for record in wanted:
                        _handle(handler, record)
            if _STOP in batch:
                return


def _handle(handler: logging.Handler, record: logging.LogRecord) -> None:
    try:
        handler.handle(record)
    except Exception:  # a handler's bug must not end the writing
        handler.handleError(record)


# Handlers whose emit is "format, write to ``stream``, flush" (a rotated file reopened
# first): their lines can be formatted apart and written in one go.
_STREAMS = (logging.StreamHandler, logging.FileHandler, logging.handlers.WatchedFileHandler)


def _write_together(
    handler: logging.StreamHandler,  # type: ignore[type-arg]
    records: list[logging.LogRecord],
) -> None:
    """The records through ``handler``'s filters and formatter, as its ``emit`` would,
    then to its stream in one write."""
    lines: list[str] = []
    for record in records:
        try:
            kept = handler.filter(record)
            if not kept:
                continue
            if isinstance(kept, logging.LogRecord):  # Python 3.12: a filter may replace it
                record = kept
            lines.append(handler.format(record) + handler.terminator)
        except Exception:
            handler.handleError(record)
    if not lines:
        return
    handler.acquire()
    try:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.reopenIfNeeded()  # the file was rotated: write to the new one
        handler.stream.write("".join(lines))
        handler.flush()
    except Exception:
        handler.handleError(records[-1])
    finally:
        handler.release()


def write_in_background(logger: logging.Logger) -> LogWriter | None:
    """Have ``logger``'s lines written by a thread of their own until the process exits;
    ``None`` if they already are, or if it has no handlers."""
    if not logger.handlers or any(isinstance(h, _Enqueue) for h in logger.handlers):
        return None
    writer = LogWriter(logger)
    writer.start()
    atexit.register(writer.stop)
    return writer
