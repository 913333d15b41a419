"""A broadcast's fan-out keeps pace with its channel pool (workers/pacing.py): it lets
no more than NOTIFIER_FANOUT_AHEAD batches wait in a channel queue, so no dispatched row
outlives the dispatch grace in the broker; and a queue nothing consumes stops being
waited for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from harness.services import free_redis_db
from harness.worker import WorkerProcess
from tests.integration.conftest import ENV, wait_until
from workers import notify
from workers.celery import app
from workers.queues import NOTIFY

APP = "testapp"
DEVICES, BATCH, AHEAD = 300, 10, 3  # 30 batches, 3 of them let wait


@pytest.fixture
def broker() -> Iterator[tuple[str, redis.Redis]]:
    """A Redis database of its own: only this test's workers and messages are in it."""
    url = free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0])
    client = redis.Redis.from_url(url)
    yield url, client
    client.flushdb()
    client.close()


def _devices(store: Any, platforms: tuple[str, ...] = ("apns",)) -> list[str]:
    """DEVICES devices per platform, interleaved in id order (apns, fcm, apns, ...)."""
    tokens = [os.urandom(32).hex() for _ in range(DEVICES * len(platforms))]
    with store.pool.connection() as conn, conn.cursor() as cur:  # set-up: one COPY
        with cur.copy("COPY devices (app, user_id, platform, token) FROM STDIN") as copy:
            for i, tok in enumerate(tokens):
                copy.write_row((APP, f"p{i}", platforms[i % len(platforms)], tok))
    return tokens


def _broadcast(url: str, everyone: Any = "apns") -> str:
    with app.connection_for_write(url) as conn, conn.Producer() as producer:
        result: Any = notify.apply_async((APP,), {"everyone": everyone, "title": "sale"}, producer=producer)
    return str(result.id)


def _fan_out(store: Any, nid: str) -> tuple[Any, Any, int]:
    with store.pool.connection() as conn:
        until, done = conn.execute("SELECT fanout_until, fanout_done_at FROM notifications WHERE id = %s",
                                   (nid,)).fetchone() or (None, None)
        rows = conn.execute("SELECT count(*) FROM deliveries WHERE notification_id = %s", (nid,)).fetchone()
    return until, done, int(rows[0]) if rows else 0


def test_the_fan_out_waits_for_room_in_the_channel_queue(broker, store, apns) -> None:
    """No APNs pool yet: the fan-out dispatches three batches and holds, renewing its
    lease, with no more rows written; an APNs pool comes, and the queue never holds more
    than three while the rest goes out, each device once."""
    url, client = broker
    tokens = _devices(store)
    env = {**ENV, "REDIS_URL": url, "NOTIFIER_BATCH_SIZE": str(BATCH), "NOTIFIER_FANOUT_AHEAD": str(AHEAD),
           "NOTIFIER_DISPATCH_GRACE": "60"}
    fan = WorkerProcess(env, queues=[NOTIFY], concurrency=1).start()
    pool = None
    try:
        nid = _broadcast(url)
        wait_until(lambda: client.llen("apns") >= AHEAD, what="three batches dispatched")
        # it renews its lease while it waits (every 5 s): twice, so at least once after the
        # lease its last page moved, and it has dispatched no more
        until = wait_until(lambda: _fan_out(store, nid)[0], what="the fan-out's lease")
        for _ in range(2):
            until, done, rows = wait_until(lambda u=until: (f := _fan_out(store, nid))[0] > u and f, timeout=30,
                                           what="the waiting fan-out to renew its lease")
        assert done is None and client.llen("apns") == AHEAD
        assert rows == AHEAD * BATCH  # a page is written when it can be dispatched
        pool = WorkerProcess(env, queues=["apns"], concurrency=1).start()
        deepest = [0]

        def finished() -> bool:
            deepest[0] = max(deepest[0], int(client.llen("apns")))
            st = store.status(nid, failures=False)
            return bool(st and st.settled)

        wait_until(finished, timeout=120, what="the broadcast to settle")
        assert deepest[0] <= AHEAD
        assert store.status(nid).counts == {"delivered": DEVICES}
        assert sorted(apns.delivered_count(t) for t in tokens) == [1] * DEVICES
        assert "waiting for room in the channel queues" in fan.log()
    finally:
        if pool is not None:
            pool.stop()
        fan.stop()


def test_a_queue_no_pool_consumes_stops_being_waited_for(broker, store, apns) -> None:
    """Nothing takes from the APNs queue for the dispatch grace (5 s here): the fan-out
    says so and dispatches the rest, as it would with no pacing."""
    url, client = broker
    _devices(store)
    env = {**ENV, "REDIS_URL": url, "NOTIFIER_BATCH_SIZE": str(BATCH), "NOTIFIER_FANOUT_AHEAD": str(AHEAD)}
    fan = WorkerProcess(env, queues=[NOTIFY], concurrency=1).start()
    try:
        nid = _broadcast(url)
        wait_until(lambda: _fan_out(store, nid)[1], timeout=60, what="the fan-out to finish")
        assert client.llen("apns") == DEVICES // BATCH and _fan_out(store, nid)[2] == DEVICES
        assert "queue apns: no batch taken for" in fan.log()
    finally:
        fan.stop()


def test_a_slow_channel_does_not_hold_the_others_back(broker, store, apns, fcm) -> None:
    """A broadcast to APNs and FCM devices, interleaved in id order, with an APNs pool and
    no FCM pool: every APNs device is delivered while three FCM batches wait, and no more
    (one cursor for both platforms would stop at the full FCM queue)."""
    url, client = broker
    tokens = _devices(store, ("apns", "fcm"))
    env = {**ENV, "REDIS_URL": url, "NOTIFIER_BATCH_SIZE": str(BATCH), "NOTIFIER_FANOUT_AHEAD": str(AHEAD),
           "NOTIFIER_DISPATCH_GRACE": "60"}
    fan = WorkerProcess(env, queues=[NOTIFY], concurrency=1).start()
    pool = WorkerProcess(env, queues=["apns"], concurrency=1).start()
    try:
        nid = _broadcast(url, True)
        apns_tokens = tokens[0::2]
        wait_until(lambda: all(apns.delivered_count(t) for t in apns_tokens), timeout=120,
                   what="every APNs device delivered")
        assert client.llen("fcm") == AHEAD and len(fcm.records) == 0
        expected = {"delivered": DEVICES, "pending": AHEAD * BATCH}  # the last outcomes are written just after
        wait_until(lambda: store.status(nid, failures=False).counts == expected, what=f"counts {expected}")
    finally:
        pool.stop()
        fan.stop()
