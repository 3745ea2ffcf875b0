"""The Celery app. Configuration is read from settings lazily, on first use."""

from __future__ import annotations

from typing import Any

from celery import Celery

from service import constants as c
from service.config import Settings, get_settings

# Publishing tries a fresh connection once, then gives up: the caller's job is stored, and
# the sweep publishes it when the broker is back.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0.1,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


def _transport(settings: Settings) -> dict[str, Any]:
    if not settings.broker_is_redis:
        # RabbitMQ gives a dead consumer's unacknowledged messages back at once and keeps
        # messages across restarts (durable queues, persistent messages).
        return {
            "broker_transport_options": {
                "confirm_publish": True,
                "connect_retries_timeout": settings.ezq_publish_timeout,
                "max_retries": 2,
            },
            "broker_connection_timeout": settings.ezq_publish_timeout,
        }
    options = {
        "visibility_timeout": settings.ezq_broker_visibility_timeout,
        "unacked_restore_interval": c.BROKER_RESTORE_INTERVAL_S,
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": settings.ezq_publish_timeout,
        # A publish that finds the connection gone reconnects for at most this long, then
        # fails (the job is parked for the sweep): without it a worker's sweep or a
        # next-turn wake-up would block until the broker came back.
        "connect_retries_timeout": settings.ezq_publish_timeout,
        "max_retries": 2,
        "health_check_interval": 10,
    }
    return {
        "broker_transport": "service.worker.transport:Transport",
        "broker_transport_options": options,
        "result_backend_transport_options": {
            "visibility_timeout": settings.ezq_broker_visibility_timeout,
            "socket_connect_timeout": settings.ezq_publish_timeout,
            "retry_policy": {"max_retries": 1},
        },
    }


def celery_config() -> dict[str, Any]:
    settings = get_settings()
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
        **_transport(settings),
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "result_expires": settings.ezq_result_expires,
        "result_extended": True,
        "broker_connection_retry_on_startup": True,
        # Reconnect for ever after a broker restart rather than exit: jobs are safe in
        # Postgres, and a worker that comes back by itself needs no supervisor to notice.
        "broker_connection_max_retries": None,
        "worker_pool": "threads",
        "worker_concurrency": settings.ezq_worker_concurrency,
        # Messages that are not ezq's (malformed, unknown tasks) are kept aside, never fatal.
        "worker_consumer": "service.worker.consumer:Consumer",
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
        # Task events, so that Flower and `celery events` see every task (on by default);
        # worker events (online, heartbeats) are sent either way.
        "worker_send_task_events": settings.ezq_task_events,
        "task_send_sent_event": settings.ezq_task_events,
    }


app = Celery("ezq", include=["service.worker.tasks", "service.webhooks.tasks"])
app.add_defaults(celery_config)


def publish_job(job_id: object) -> None:
    """Send the run message for a stored job. The task id is the job id.

    Callers go through ``service.worker.dispatch.publish_jobs``, which leaves what cannot
    be published to the sweep.
    """
    app.send_task(
        c.TASK_CHAT_COMPLETION,
        kwargs={"job_id": str(job_id)},
        task_id=str(job_id),
        queue=get_settings().ezq_queue,
        ignore_result=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )
