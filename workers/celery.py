"""The Celery app: ``celery -A workers worker -Q webpush`` finds it here.

Settings chosen for at-least-once delivery on Redis:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is
  delivered again (acks_late alone loses a task whose child is SIGKILLed);
- ``worker_prefetch_multiplier = 1``: batch tasks are long; a worker must not sit on
  tasks another idle worker could run;
- ``visibility_timeout`` one hour: far above the longest batch, and above every retry
  countdown we set (Redis re-delivers unacknowledged ETA tasks past it too).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_shutdown

from beat_schedule import beat_schedule
from notifier.config import Settings
from workers.queues import NOTIFY, ROUTES

VISIBILITY_TIMEOUT = 3600

settings = Settings.from_env()

app = Celery("notifier", broker=settings.redis_url, include=["workers.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=NOTIFY,
    task_routes=ROUTES,
    beat_schedule=beat_schedule,
    worker_hijack_root_logger=False,
)


@worker_process_shutdown.connect
def _close_runtime(**_: object) -> None:
    from workers.runtime import shutdown

    shutdown()
