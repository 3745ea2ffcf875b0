"""The request Celery keeps for each task message a worker holds, without the task's
arguments in what it answers remote control with.

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
    def info(self, safe: bool = False) -> dict[str, Any]:
        described: dict[str, Any] = super().info(safe)
        described["args"] = described["kwargs"] = c.ARGUMENTS_NOT_SHOWN
        return described
