"""The Celery app. Configuration is read from settings lazily, on first use."""

from __future__ import annotations

from typing import Any

from celery import Celery

from service import constants as c
from service.config import get_settings


def celery_config() -> dict[str, Any]:
    settings = get_settings()
    transport = {"visibility_timeout": c.BROKER_VISIBILITY_TIMEOUT_S}
    return {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.ezq_queue,
        "task_routes": {"ezq.*": {"queue": settings.ezq_queue}},
        # At-least-once delivery: a message is acknowledged only after the task ran, a
        # worker that dies mid-task gives it back, and each thread takes one at a time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "result_expires": settings.ezq_result_expires,
        "result_extended": True,
        "broker_connection_retry_on_startup": True,
        "worker_pool": "threads",
        "worker_concurrency": settings.ezq_worker_concurrency,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
        "beat_schedule": {
            "ezq-sweep": {"task": c.TASK_SWEEP, "schedule": 60.0},
        },
        # Beat keeps its schedule in memory: the sweep needs no state across restarts, so
        # no schedule file is shared by the beats of one host or left behind.
        "beat_scheduler": "celery.beat:Scheduler",
        # Task events on, so that Flower and `celery events` see every task.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


app = Celery("ezq", include=["service.worker.tasks", "service.webhooks.tasks"])
app.add_defaults(celery_config)


def publish_job(job_id: object) -> None:
    """Send the run message for a stored job. The task id is the job id."""
    app.send_task(
        c.TASK_CHAT_COMPLETION,
        kwargs={"job_id": str(job_id)},
        task_id=str(job_id),
        queue=get_settings().ezq_queue,
    )
