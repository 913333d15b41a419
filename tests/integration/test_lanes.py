"""The transactional lane: a notification to a few users is fanned out and sent by one
task on a queue of its own, never queued behind a broadcast's batches."""

from __future__ import annotations

import os
from typing import Any

import redis

from harness.services import free_redis_db
from harness.worker import WorkerProcess
from notifier import register_device
from tests.integration.conftest import ENV
from workers import notify
from workers.celery import app
from workers.queues import NOTIFY, TRANSACTIONAL

APP = "testapp"


def test_a_few_users_take_the_lane_and_are_sent_from_it_alone(apns, settled, store) -> None:
    """A broker of its own, and a worker that consumes the transactional queue only: the
    one-user notification is delivered by it (fan-out and send in one task); the
    21-user one waits in the notify queue for the fan-out pool, untouched."""
    url = free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0])
    tokens = [os.urandom(32).hex() for _ in range(21)]
    for i, t in enumerate(tokens):
        register_device(APP, f"u{i}", "apns", t)
    lane = WorkerProcess({**ENV, "REDIS_URL": url}, queues=[TRANSACTIONAL], concurrency=1).start()
    broker = redis.Redis.from_url(url)
    try:
        with app.connection_for_write(url) as conn, conn.Producer() as producer:
            one: Any = notify.apply_async((APP, ["u0"]), {"title": "reset your password"}, producer=producer)
            many: Any = notify.apply_async((APP, [f"u{i}" for i in range(21)]), {"title": "news"},
                                           producer=producer)
        st = settled(one.id)
        assert st.counts == {"delivered": 1} and apns.delivered_count(tokens[0]) == 1
        assert broker.llen(NOTIFY) == 1 and store.status(many.id) is None  # not even stored: no fan-out ran
        assert len(apns.records) == 1
    finally:
        lane.stop()
        broker.flushdb()
        broker.close()
