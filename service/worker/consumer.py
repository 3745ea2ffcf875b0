"""Celery's consumer, with every message it cannot run kept aside instead of crashing or
logged with its content, task events published in batches and without the task's
arguments.

Celery logs undecodable and unknown messages with their body (which may hold prompts and
keys) and, for a few malformed shapes, lets the exception end the worker. Here each such
message is acknowledged, stored as a dead letter with the reason, and logged once by size.

Celery buffers task events (Flower's ``task-received``, ``-started``, ``-succeeded``) and
publishes the buffer as one message, but it schedules that publish at every event, and a
worker thread's event wakes the event loop to do it: at 0 ms gateway latency and 64 calls
in flight, a tenth of the worker's CPU went to publishing, about one Redis ``PUBLISH`` per
event. Here the buffer is published every ``EVENT_FLUSH_INTERVAL_S`` by the event loop,
so a monitor sees a task's events up to that much later, a few dozen in each message.
Celery also publishes it from whichever thread finds it full (24 events): every thread
that sent an event while that publish's round trip was under way found it full too and
published what little had come since (at 0 ms gateway latency and 32 calls in flight, 71
messages a second of 9 events each, from the threads that run jobs). The buffer's limit is
raised to ``EVENT_BUFFER_LIMIT``, which only a stalled event loop (or a broker outage)
lets it reach; what it holds when the connection is lost goes out on the next one. (The
``task-sent`` events of tasks a job sends, a follow-up turn or a webhook delivery, are
published by Celery's producer as they are sent, one message each, as before.)

A task message's headers carry its arguments as text (``argsrepr``, ``kwargsrepr``, up to
a kilobyte each), which Celery copies into the ``task-received`` event a monitor keeps and
shows (Flower's task page): a foreign producer's messages, callback URL and metadata. They
are replaced before Celery reads them; the event's ``uuid`` is the job's id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from service import constants as c
from service.worker.deadletter import set_aside

EVENT_FLUSH_INTERVAL_S = 0.1
# Events waiting before a thread that sends one publishes them itself: a few seconds'
# worth at a busy worker's rate (three a job), so that the timer publishes them.
EVENT_BUFFER_LIMIT = 2000
_ARGUMENT_TEXTS = ("argsrepr", "kwargsrepr")


def _describe(message: Any) -> dict[str, Any]:
    headers = message.headers if isinstance(getattr(message, "headers", None), dict) else {}
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    return {
        "queue": info.get("routing_key"),
        "task_name": str(headers["task"]) if "task" in headers else None,
        "message_id": str(headers["id"]) if "id" in headers else None,
    }


def _raw(message: Any) -> Any:
    raw = getattr(message, "_raw", None)
    return raw if raw is not None else message.body


def _hide_arguments(message: Any) -> None:
    """Replace the arguments' text in ``message``'s headers, which Celery puts in the
    ``task-received`` event, before it builds its request from them."""
    headers = message.headers
    if isinstance(headers, dict) and any(name in headers for name in _ARGUMENT_TEXTS):
        # A new dict: the raw message shares the old one, and a dead letter keeps the
        # message as it arrived.
        message.headers = {
            **headers,
            **{name: c.ARGUMENTS_NOT_SHOWN for name in _ARGUMENT_TEXTS if name in headers},
        }


def _body_problem(message: Any) -> str | None:
    """Why a task message's body cannot be ``[args, kwargs, options]``, or None.

    Celery decodes the body only in the worker thread, where a malformed one raises
    outside any handler: the message would stay unacknowledged and the job unseen. So the
    shape is checked here, before the message is handed over (bodies are small: a job id,
    or a foreign producer's request).
    """
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None  # Celery's own handling: an unknown message or protocol 1
    try:
        body = message.decode()
    except Exception as exc:  # undecodable: Celery's decode-error path would say the same
        return f"the body cannot be decoded: {type(exc).__name__}"
    if (
        not isinstance(body, list | tuple)
        or len(body) != 3
        or not isinstance(body[0], list | tuple)
        or not isinstance(body[1], dict)
        or not isinstance(body[2], dict)
    ):
        return "the body is not [args, kwargs, options]"
    return None


def carry_buffered_events(previous: Any, current: Any) -> None:
    """Move the task events ``previous`` (a dispatcher whose connection was lost) still
    buffers to the front of ``current``'s buffer, to go out with its next publish.

    Celery carries over only the events whose publish failed; those its threads had
    buffered for the timer, which was cancelled with the connection, would be dropped
    (up to ``EVENT_BUFFER_LIMIT``). ``previous`` is disabled by then: nothing is added to
    its buffer any more.
    """
    for group, events in list(previous._group_buffer.items()):
        if events:
            taken = list(events)
            del events[: len(taken)]
            current._group_buffer[group][0:0] = taken


class Consumer(CeleryConsumer):  # type: ignore[misc]
    _last_dispatcher: Any = None

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)
        dispatcher = self.event_dispatcher  # made anew at each connection
        if dispatcher is not None:
            dispatcher.buffer_limit = EVENT_BUFFER_LIMIT
            previous, self._last_dispatcher = self._last_dispatcher, dispatcher
            if previous is not None and previous is not dispatcher:
                carry_buffered_events(previous, dispatcher)
        # Cancelled with the loop's other timers when the connection is lost, and
        # registered again when it is back.
        hub.call_repeatedly(EVENT_FLUSH_INTERVAL_S, self._flush_events)

    def on_send_event_buffered(self) -> None:
        """A task event was buffered: the timer publishes it with the others."""

    def shutdown(self) -> None:
        # The events buffered since the last tick, and those of the tasks that finished
        # during a warm shutdown, before the dispatcher closes.
        with contextlib.suppress(Exception):
            self._flush_events()
        super().shutdown()

    def _set_aside(self, message: Any, reason: str, kind: str) -> None:
        set_aside(_raw(message), reason, kind=kind, **_describe(message))
        # Already acknowledged, or the connection is gone (then it comes back, and is kept
        # aside again): nothing more to do either way.
        with contextlib.suppress(Exception):
            message.ack()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._set_aside(
            message, f"the body cannot be decoded: {type(exc).__name__}", "undecodable_body"
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._set_aside(message, "not a Celery task message (no task name)", "not_a_task")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = _describe(message)["task_name"]
        self._set_aside(message, f"unknown task {name!r}", "unknown_task")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._set_aside(message, f"invalid task message: {type(exc).__name__}", "invalid_task")

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            try:
                problem = _body_problem(message)
                if problem is not None:
                    self._set_aside(message, problem, "invalid_task")
                    return None
                _hide_arguments(message)
                return handle(message)
            except Exception as exc:  # a malformed message must never end the worker
                self._set_aside(
                    message, f"malformed task message: {type(exc).__name__}", "invalid_task"
                )
                return None

        return on_task_received
