"""What ``notifier doctor`` asks the runtime: each queue's depth, and the workers seen on it."""

from __future__ import annotations

import redis

from notifier.config import Settings, is_rabbitmq
from notifier.doctor import TIMEOUT, Check
from workers.celery import app
from workers.queues import ALL_QUEUES


def queue_checks(settings: Settings) -> list[Check]:
    """One check per queue: OK when a worker consumes it (Celery's ping over the broker)."""
    try:
        seen = app.control.inspect(timeout=1.0).active_queues() or {}
    except Exception as exc:  # the broker is down: the services' checks say so already
        return [Check("workers", False, f"cannot ask the workers: {type(exc).__name__}")]
    consumers: dict[str, list[str]] = {}
    for worker, queues in seen.items():
        for q in queues:
            consumers.setdefault(q["name"], []).append(worker.split("@", 1)[0])
    depths = _depths(settings)
    out = []
    for queue in ALL_QUEUES:
        waiting = f"{depths[queue]} waiting, " if queue in depths else ""
        workers = sorted(consumers.get(queue, []))
        out.append(Check(f"queue {queue}", bool(workers),
                         f"{waiting}workers: {', '.join(workers)}" if workers else
                         f"{waiting}no worker consumes it: start the Procfile's {queue} process"))
    return out


def _depths(settings: Settings) -> dict[str, int]:
    if is_rabbitmq(settings.broker_url):
        return {}
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        return {q: int(client.llen(q)) for q in ALL_QUEUES}
    except redis.RedisError:
        return {}
    finally:
        client.close()
