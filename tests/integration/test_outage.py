"""A provider down for twenty minutes: every device is delivered once it is back.

Twenty minutes are not waited for. The worker and beat run with the default retry
settings (an hour's window from each device's first attempt, 50 attempts); once every
device has met the outage, the clock moves on twenty minutes as far as the store knows:
first attempts twenty minutes ago, and as many attempts made as the backoff schedule
makes in twenty minutes at its most eager (over 300 seeds). At minute twenty, still in
the outage, the push service's circuit breaker lets its probes through and parks the
rest: every device is still owed, none given up; then the push service comes back, the
breaker closes after its cooldown and the parked retries fall due.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from harness.services import create_database, drop_database, free_redis_db
from harness.worker import BeatProcess, WorkerProcess
from notifier.api import prepare_notify
from notifier.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_WINDOW, Settings
from notifier.endpoints import origin_of
from notifier.migrate import migrate
from notifier.store import Store
from tests.integration.conftest import ENV, wait_until
from workers.breaker import PREFIX, origin_breaker
from workers.celery import app
from workers.queues import TASK_FAN_OUT
from workers.retry import backoff
from workers.tasks import PROBE_SIZE

APP = "testapp"
OUTAGE = 20 * 60


def most_attempts_within(seconds: float) -> int:
    """The most attempts the retry schedule makes within ``seconds`` of the first, over 300 seeds."""
    most = 0
    for seed in range(300):
        rng, elapsed, tries = random.Random(seed), 0.0, 1
        while (elapsed := elapsed + backoff(tries, None, rng)) < seconds:
            tries += 1
        most = max(most, tries)
    return most


@pytest.fixture
def defaults_stack() -> Iterator[tuple[Store, dict[str, str]]]:
    """A database, a broker db, a worker and a beat of their own, with the default retry settings."""
    server = ENV["DATABASE_URL"].rsplit("/", 1)[0]
    name = f"{ENV['DATABASE_URL'].rsplit('/', 1)[1]}_outage"
    url = create_database(server, name)
    migrate(url)
    env = {**ENV, "DATABASE_URL": url, "REDIS_URL": free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0]),
           "NOTIFIER_MAX_ATTEMPTS": str(DEFAULT_MAX_ATTEMPTS), "NOTIFIER_RETRY_WINDOW": str(DEFAULT_RETRY_WINDOW)}
    store = Store(url)
    worker, beat = WorkerProcess(env, concurrency=2).start(), BeatProcess(env).start()
    try:
        yield store, env
    finally:
        beat.stop()
        worker.stop()
        store.close()
        r = redis.Redis.from_url(env["REDIS_URL"])
        r.flushdb()
        r.close()
        drop_database(server, name)


@pytest.mark.timeout(600)
def test_a_twenty_minute_outage_is_delivered_after_recovery(webpush: Any, defaults_stack: Any) -> None:
    store, env = defaults_stack
    subs = [webpush.subscribe() for _ in range(30)]
    for i, sub in enumerate(subs):
        from notifier import register_device

        register_device(APP, f"o{i}", "webpush", sub, store=store)
    webpush.outage()
    request = prepare_notify(APP, [f"o{i}" for i in range(30)], title="after the outage", ttl=86_400)
    with app.connection_for_write(env["REDIS_URL"]) as conn, conn.Producer() as producer:
        app.send_task(TASK_FAN_OUT, args=(request.to_json(),), task_id=request.id, producer=producer)

    def tried() -> bool:
        with store.pool.connection() as c:
            row = c.execute("SELECT count(*) FILTER (WHERE status = 'retrying' AND attempts >= 1), count(*)"
                            " FROM deliveries WHERE notification_id = %s", (request.id,)).fetchone()
        return row == (30, 30)

    wait_until(tried, timeout=60, what="every device to meet the outage")
    attempts = most_attempts_within(OUTAGE)
    assert attempts < Settings.from_env(env).max_attempts  # the schedule has attempts left after 20 minutes
    with store.pool.connection() as c:  # twenty minutes pass
        c.execute("UPDATE notifications SET created_at = created_at - make_interval(secs => %s) WHERE id = %s",
                  (OUTAGE, request.id))
        c.execute("UPDATE deliveries SET first_tried_at = first_tried_at - make_interval(secs => %s),"
                  " attempts = greatest(attempts, %s) WHERE notification_id = %s", (OUTAGE, attempts, request.id))
    due_now = "UPDATE deliveries SET due_at = now() WHERE notification_id = %s AND status = 'retrying'"
    with store.pool.connection() as c:  # at minute twenty, still down: one more attempt each, still owed
        c.execute(due_now, (request.id,))

    def tried_again() -> bool:
        """The origin's circuit breaker is open by now: it parks the rows (their attempt not
        counted) and lets a probe of PROBE_SIZE devices through after each cooldown."""
        with store.pool.connection() as c:
            rows = c.execute("SELECT status, attempts FROM deliveries WHERE notification_id = %s",
                             (request.id,)).fetchall()
        assert all(status in ("retrying", "sending", "pending") for status, _ in rows), rows  # none given up
        assert all(n < Settings.from_env(env).max_attempts for _, n in rows), rows
        return sum(status == "retrying" and n > attempts for status, n in rows) >= PROBE_SIZE

    wait_until(tried_again, timeout=90, what="the breaker's probe to be tried again at minute twenty")
    webpush.outage(None)  # the push service is back, and the retries fall due
    with store.pool.connection() as c:
        c.execute(due_now, (request.id,))
    # the breaker reopens after its cooldown (doubled with every failed probe), and the rows
    # it parked come back within one more cooldown
    breakers = redis.Redis.from_url(env["REDIS_URL"])
    state = {k.decode(): float(v) for k, v in breakers.hgetall(PREFIX + origin_breaker(origin_of(subs[0]["endpoint"]))).items()}
    breakers.close()
    settle = 90 + max(0.0, state.get("until", 0.0) - time.time()) + state.get("cooldown", 0.0)
    st = wait_until(lambda: (s := store.status(request.id)) and s.settled and s, timeout=settle, what="delivery")
    assert st.counts == {"delivered": 30}
    assert [webpush.delivered_count(s) for s in subs] == [1] * 30
    print(f"after 20 minutes down ({attempts} attempts each at most), all 30 delivered")
