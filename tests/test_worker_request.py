"""The request the worker builds for a task message hands its pool the body Celery already
decoded in the event loop, so that the job's thread does not decode it again."""

from __future__ import annotations

import uuid
from typing import Any

from celery.app.trace import trace_task_ret
from kombu import Connection, Consumer, Queue

from service import constants as c
from service.worker.app import app
from service.worker.request import Request


def _received_message(kwargs: dict[str, Any]) -> Any:
    """A task message as a foreign producer sends it, as the worker's consumer receives it."""
    got: list[Any] = []
    with Connection("memory://") as connection:
        queue = Queue(f"request-{uuid.uuid4().hex[:8]}")
        app.send_task(
            "tests.echo", kwargs=kwargs, connection=connection, queue=queue, ignore_result=True
        )
        with Consumer(connection, [queue], callbacks=[lambda _b, m: got.append(m)], accept=None):
            connection.drain_events(timeout=5)
    return got[0]


def test_the_pool_gets_the_decoded_body() -> None:
    seen: list[dict[str, Any]] = []

    @app.task(name="tests.echo", shared=False, Request=Request)
    def echo(**kwargs: Any) -> None:
        seen.append(kwargs)

    message = _received_message({"model": "m", "messages": [{"role": "user", "content": "hé"}]})
    request = Request(message, app=app, task=echo)

    assert request.content_type is None and request.content_encoding is None
    assert request.body is message.payload
    args, kwargs, _ = request.body
    assert (list(args), kwargs["model"]) == ([], "m")
    # The tracer runs it as it is: it decodes only a body that has a content type.

    def no_decoding(*_: Any, **__: Any) -> Any:
        raise AssertionError("the body was decoded again")

    failed, _, _ = trace_task_ret(
        request.type,
        request.id,
        request.request_dict,
        request.body,
        request.content_type,
        request.content_encoding,
        loads=no_decoding,
        app=app,
    )
    assert not failed
    assert seen == [{"model": "m", "messages": [{"role": "user", "content": "hé"}]}]
    # What remote control shows still hides the arguments.
    assert request.info()["kwargs"] == c.ARGUMENTS_NOT_SHOWN
