"""The fault suite: a broadcast to every channel, a fault in the middle, and the count of
what the simulators received per device: delivered, lost, duplicated.

Each test runs against its own throwaway Redis (append-only, every write fsynced) and
PostgreSQL (own port, own data directory), so restarting them never touches the
machine's shared servers. The table is printed at the end of the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
import redis

from harness.services import Throwaway, create_database, start_postgres, start_redis
from harness.worker import BeatProcess, WorkerProcess
from notifier import register_device
from notifier.migrate import migrate
from notifier.store import Store
from tests.integration.conftest import ENV, FAULT_TABLE, wait_until
from workers import app as celery_app
from workers import notify

APP = "testapp"
WEB, IOS, ANDROID = 300, 150, 60


@dataclass
class Devices:
    users: list[str]
    subs: list[dict[str, Any]]
    ios: list[str]
    android: list[str]
    counters: dict[str, Callable[[], int]]  # user -> deliveries the simulators answered


@dataclass
class Stack:
    redis: Throwaway
    postgres: Throwaway
    database_url: str
    store: Store
    worker: WorkerProcess
    env: dict[str, str]

    def notify(self, users: list[str], **fields: Any) -> str:
        """notify.delay, published to this stack's Redis."""
        with celery_app.connection_for_write(self.redis.url) as conn:
            return str(notify.apply_async((APP, users), fields, producer=conn.Producer()).id)

    def register(self, webpush: Any, apns: Any, fcm: Any) -> Devices:
        """One device per user, on every channel."""
        d = Devices([], [], [], [], {})
        for i in range(WEB):
            sub = webpush.subscribe()
            register_device(APP, f"w{i}", "webpush", sub, store=self.store)
            d.subs.append(sub)
            d.counters[f"w{i}"] = lambda s=sub: int(webpush.delivered_count(s))
        for i in range(IOS):
            tok = os.urandom(32).hex()
            register_device(APP, f"i{i}", "apns", tok, store=self.store)
            d.ios.append(tok)
            d.counters[f"i{i}"] = lambda t=tok: sum(1 for r in apns.delivered() if r.token == t)
        for i in range(ANDROID):
            tok = "fault-" + os.urandom(20).hex()
            register_device(APP, f"a{i}", "fcm", tok, store=self.store)
            d.android.append(tok)
            d.counters[f"a{i}"] = lambda t=tok: fcm.deliveries_by_token().get(t, 0)
        d.users = list(d.counters)
        return d


@pytest.fixture
def stack() -> Iterator[Stack]:
    redis = start_redis(appendonly=True)
    postgres = start_postgres()
    database_url = create_database(postgres.url, f"faults_{uuid.uuid4().hex[:8]}")
    migrate(database_url)
    # The default visibility timeout (five minutes): recovery must not wait for it.
    env = {**ENV, "REDIS_URL": redis.url, "DATABASE_URL": database_url, "NOTIFIER_MAX_ATTEMPTS": "8"}
    worker = WorkerProcess(env, concurrency=2).start()
    beat = BeatProcess(env).start()
    store = Store(database_url)
    try:
        yield Stack(redis, postgres, database_url, store, worker, env)
    finally:
        beat.stop()
        worker.stop()
        store.close()
        redis.stop()
        postgres.stop()


@pytest.fixture
def sims(webpush: Any, apns: Any, fcm: Any) -> tuple[Any, Any, Any]:
    return webpush, apns, fcm


def run_broadcast(name: str, stack: Stack, devices: Devices, sims: tuple[Any, Any, Any],
                  fault: Callable[[], None], strike_at: float = 0.25, max_duplicates: int = 0) -> None:
    """Broadcast; the fault strikes once ``strike_at`` of the devices have it."""
    webpush, apns, fcm = sims
    nid = stack.notify(devices.users, title="fault drill", body=name)
    total = len(devices.users)
    wait_until(lambda: len(webpush.delivered()) + len(apns.delivered()) + len(fcm.delivered()) >= total * strike_at,
               timeout=60, what=f"{strike_at:.0%} of the broadcast")
    fault()
    wait_until(lambda: (st := stack.store.status(nid)) and st.settled, timeout=240, what=f"{name}: every outcome")
    counts = {u: c() for u, c in devices.counters.items()}
    lost = sorted(u for u, n in counts.items() if n == 0)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    delivered = sum(1 for n in counts.values() if n)
    FAULT_TABLE.append((name, total, delivered, len(lost), duplicates))
    assert not lost, f"{name}: {len(lost)} devices never got it, e.g. {lost[:5]}"
    assert duplicates <= max_duplicates, f"{name}: {duplicates} duplicate deliveries (bound {max_duplicates})"


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.timeout(400)
def test_sigkill_worker_processes_mid_broadcast(stack: Stack, sims: tuple[Any, Any, Any]) -> None:
    devices = stack.register(*sims)

    killed: list[int] = []

    def kill() -> None:
        assert stack.worker.proc is not None
        killed.extend(children(stack.worker.proc.pid))
        for child in killed:
            os.kill(child, signal.SIGKILL)

    # A process killed after the providers answered a batch and before it wrote the outcomes
    # leaves that batch to be sent again when its claim lapses: at most one batch per process.
    bound = stack.worker.concurrency * int(ENV["NOTIFIER_BATCH_SIZE"])
    run_broadcast("SIGKILL worker processes", stack, devices, sims, kill, max_duplicates=bound)
    assert stack.worker.proc is not None and len(killed) == 2
    assert not set(killed) & set(children(stack.worker.proc.pid))  # the pool replaced them


@pytest.mark.timeout(400)
def test_redis_restart_mid_broadcast(stack: Stack, sims: tuple[Any, Any, Any]) -> None:
    before = time.time()
    run_broadcast("Redis crash and restart", stack, stack.register(*sims), sims, stack.redis.restart)
    client = redis.Redis.from_url(stack.redis.url)  # the broker the broadcast rode on started mid-broadcast
    assert time.time() - int(client.info("server")["uptime_in_seconds"]) >= before - 1
    client.close()


@pytest.mark.timeout(400)
def test_postgres_restart_mid_broadcast(stack: Stack, sims: tuple[Any, Any, Any]) -> None:
    before = time.time()
    run_broadcast("PostgreSQL crash and restart", stack, stack.register(*sims), sims, stack.postgres.restart)
    with stack.store.pool.connection() as conn:  # the server the outcomes are in started mid-broadcast
        started = conn.execute("SELECT extract(epoch FROM pg_postmaster_start_time())").fetchone()[0]
    assert float(started) > before


@pytest.mark.timeout(400)
def test_provider_outage_then_recovery(stack: Stack, sims: tuple[Any, Any, Any]) -> None:
    webpush, apns, fcm = sims
    devices = stack.register(*sims)
    r = redis.Redis.from_url(stack.redis.url)

    # every provider answers 503 to everything, from the start, until its circuit breaker opened
    webpush.outage()
    apns.outage()
    fcm.outage("unavailable")

    def recovery() -> None:
        for platform, sim in (("webpush", webpush), ("apns", apns), ("fcm", fcm)):
            wait_until(lambda p=platform: r.exists(f"notifier:breaker:{p}:testapp"), timeout=60,
                       what=f"the {platform} breaker to open")
            sim.outage(None)

    run_broadcast("provider 503 outage, then recovery", stack, devices, sims, recovery, strike_at=0)
    r.close()


@pytest.mark.timeout(400)
def test_429_storm_with_retry_after(stack: Stack, sims: tuple[Any, Any, Any]) -> None:
    webpush, apns, fcm = sims
    devices = stack.register(*sims)
    for sub in devices.subs:
        webpush.script(sub, "throttle", retry_after=2, times=1)
    for tok in devices.ios:
        apns.script(tok, "throttled", times=1)
    for tok in devices.android:
        fcm.script(tok, "quota", retry_after=2, times=1)
    run_broadcast("429 storm with Retry-After", stack, devices, sims, lambda: None)
    # no second request to a throttled subscription before its Retry-After passed
    by_endpoint: dict[str, list[Any]] = {}
    for push in webpush.records:
        by_endpoint.setdefault(push.endpoint, []).append(push)
    for pushes in by_endpoint.values():
        assert pushes[0].status == 429 and pushes[1].received_at - pushes[0].received_at >= 2.0
