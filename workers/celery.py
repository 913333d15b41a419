"""The Celery app: ``celery -A workers worker -Q webpush`` finds it here.

Nothing is read at import: the configuration is a promise Celery evaluates the first
time it needs it, from ``Settings.current()``. Settings chosen for at-least-once
delivery on Redis:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is
  delivered again (acks_late alone loses a task whose child is SIGKILLed);
- ``worker_prefetch_multiplier = 1``: batch tasks are long; a worker must not sit on
  tasks another idle worker could run;
- on Redis, ``visibility_timeout`` (``NOTIFIER_VISIBILITY_TIMEOUT``, five minutes): above
  the longest task, and nothing waits in the broker with a countdown;
- on RabbitMQ (``NOTIFIER_BROKER_URL=amqp://...``), quorum queues and publisher confirms;
- publishing retries for about a minute, so a fan-out survives a broker restart.
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import lru_cache
from typing import Any

import redis
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    worker_init,
    worker_process_shutdown,
)

from beat_schedule import beat_schedule
from notifier.config import Settings, is_rabbitmq
from workers.queues import NOTIFY, ROUTES


def configuration(settings: Settings | None = None) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (default: this process's, read now)."""
    settings = settings or Settings.current()
    return dict(
        broker_url=settings.broker_url,
        **(rabbitmq() if is_rabbitmq(settings.broker_url) else redis_broker(settings)),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarting Redis is waited for, not given up on
        # Publishing (fan-out, retries) rides out a broker restart of up to a minute.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 60, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 1},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=NOTIFY,
        task_routes=ROUTES,
        beat_schedule=beat_schedule(settings),
        worker_hijack_root_logger=False,
    )


def redis_broker(settings: Settings) -> dict[str, Any]:
    # A task unacknowledged this long is delivered again (its worker's host is presumed gone).
    return dict(broker_transport_options={"visibility_timeout": settings.visibility_timeout})


def rabbitmq() -> dict[str, Any]:
    """RabbitMQ, as Celery recommends past one Redis: quorum queues (replicated, and a
    message survives a node's loss), publisher confirms (a publish returns once the broker
    has it), and the worker settings quorum queues need (no global QoS). RabbitMQ
    redelivers a dead worker's unacknowledged tasks when its connection drops."""
    return dict(
        task_default_queue_type="quorum",
        task_create_missing_queue_type="quorum",
        # topic exchanges: Celery's native delayed delivery (the fan-out's short retry
        # countdowns on quorum queues) binds only non-direct exchanges
        task_default_exchange_type="topic",
        task_create_missing_queue_exchange_type="topic",
        worker_detect_quorum_queues=True,
        broker_transport_options={"confirm_publish": True},
    )


app = Celery("notifier", include=["workers.tasks", "workers.fallback"])
app.add_defaults(configuration)


def waiting(queue: str) -> int:
    """Messages waiting in ``queue`` (not those a worker has taken), on Redis or RabbitMQ."""
    url = Settings.current().broker_url
    if not is_rabbitmq(url):
        return int(_broker(url).llen(queue))  # kombu's list for the queue (no priorities are used)
    pooled: Any = app.pool.acquire(block=True)  # kombu types its pool's connections loosely
    with pooled as conn:
        channel = conn.channel()  # a passive declare of a missing queue closes its channel
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except conn.channel_errors:  # not declared yet: nothing waits in it
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()


@lru_cache(maxsize=2)
def _broker(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _secure_logging(logger: object = None, **_: object) -> None:
    from notifier.logs import secure_logging

    json_lines = Settings.current().log_format == "json"
    secure_logging(logger if isinstance(logger, logging.Logger) else None, json_lines=json_lines)
    secure_logging(json_lines=json_lines)


@before_task_publish.connect
def _stamp(headers: dict[str, Any] | None = None, **_: object) -> None:
    """Every task message carries when it was published: the exporter reports the age of
    the oldest message waiting in each queue."""
    if headers is not None:
        headers.setdefault("notifier_sent_at", time.time())


@worker_init.connect
def _yield_cpu(**_: object) -> None:
    """Before the pool forks: a niced pool yields to the other sessions too."""
    from workers.priority import yield_across_sessions

    if (nice := yield_across_sessions()) is not None:
        logging.getLogger("notifier.workers").info("nice %d, and the same for this session's autogroup", nice)


@worker_process_shutdown.connect
def _close_runtime(**_: object) -> None:
    from workers.runtime import shutdown

    shutdown()
