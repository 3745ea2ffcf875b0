"""The request Celery keeps for each task message a worker holds: without the task's
arguments in what it answers remote control with, and with the body decoded once.

``celery inspect active``, ``reserved``, ``scheduled`` and ``query_task`` answer each
request's ``info()``, which holds the task's decoded arguments (``reserved`` and
``query_task`` always, ``active`` unless asked for ``--safe``): a foreign producer's
messages and metadata, printed on the terminal of whoever asked. The arguments read
``c.ARGUMENTS_NOT_SHOWN`` there, as in the task events; the request's id is the job's.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request as CeleryRequest

from service import constants as c


class Request(CeleryRequest):  # type: ignore[misc]
    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        if not self._decoded:  # type: ignore[has-type]
            # Celery's strategy decodes the body in the event loop (``message.payload``,
            # which the message keeps) to read the arguments, and hands the still encoded
            # body to the pool, whose thread decodes it again before the task runs. The
            # decoded body goes instead: a message is decoded once.
            self._body = message.payload
            self._decoded = True
            self._content_type = self._content_encoding = None

    def info(self, safe: bool = False) -> dict[str, Any]:
        described: dict[str, Any] = super().info(safe)
        described["args"] = described["kwargs"] = c.ARGUMENTS_NOT_SHOWN
        return described
