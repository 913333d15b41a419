"""The transactional lane: a notification to a few users is fanned out and sent by one
task on a queue of its own, never queued behind a broadcast's batches."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

import redis

from harness.services import free_redis_db
from harness.worker import ROOT, WorkerProcess
from notifier import register_device
from tests.integration.conftest import ENV, wait_until
from workers import notify
from workers.celery import app
from workers.priority import autogroup_enabled
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


def test_a_niced_pool_yields_to_the_other_sessions_too() -> None:
    """Each pool runs in a session of its own (honcho, the bench and these tests start it
    so); with autogroup scheduling the kernel shares the CPU between sessions first, and
    the Procfile's ``nice -n 10`` alone would not make a broadcast pool yield. The niced
    worker gives its session's group the same nice; the transactional one keeps 0."""
    url = free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0])
    broadcast = WorkerProcess({**ENV, "REDIS_URL": url}, queues=[NOTIFY], concurrency=1, nice=10).start()
    lane = WorkerProcess({**ENV, "REDIS_URL": url}, queues=[TRANSACTIONAL], concurrency=1).start()
    try:
        assert broadcast.proc is not None and lane.proc is not None
        for w in (broadcast, lane):  # the pool forks its processes after worker_init
            wait_until(lambda w=w: _children(w.proc.pid), timeout=60, what="the worker's pool processes")
        assert os.getpriority(os.PRIO_PROCESS, broadcast.proc.pid) == 10
        groups = {w: Path(f"/proc/{w.proc.pid}/autogroup").read_text() for w in (broadcast, lane) if w.proc}
        if autogroup_enabled():
            assert groups[broadcast].split()[-2:] == ["nice", "10"], groups[broadcast]
            assert groups[lane].split()[-2:] == ["nice", "0"], groups[lane]
            assert groups[broadcast].split()[0] != groups[lane].split()[0]  # two sessions, two groups
        else:  # nice alone orders every process on the host
            assert os.getpriority(os.PRIO_PROCESS, lane.proc.pid) == 0
    finally:
        broadcast.stop()
        lane.stop()
        redis.Redis.from_url(url).flushdb()


def test_a_niced_worker_sharing_its_session_leaves_the_session_alone() -> None:
    """A niced worker whose session holds another process (here a `sleep` the session's
    shell started beside it; a terminal's jobs, a supervisor's other programs) must not
    lower the priority of the whole session, the transactional lane perhaps among it."""
    url = free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0])
    worker = WorkerProcess({**ENV, "REDIS_URL": url}, queues=[NOTIFY], concurrency=1, nice=10)
    shell = subprocess.Popen(["sh", "-c", f"sleep 300 & {shlex.join(worker.command())}"],
                             env={**os.environ, **ENV, "REDIS_URL": url}, cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def started() -> list[int]:  # the worker (a child of the shell) once its pool has forked
            return [pid for pid in _children(shell.pid) if _children(pid) and b"celery" in
                    Path(f"/proc/{pid}/cmdline").read_bytes()]

        pid = wait_until(started, timeout=60, what="the worker's pool processes")[0]
        assert os.getpriority(os.PRIO_PROCESS, pid) == 10
        assert Path(f"/proc/{pid}/autogroup").read_text().split()[-2:] == ["nice", "0"]
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(30)
        redis.Redis.from_url(url).flushdb()


def test_a_notification_whose_commit_a_crash_lost_is_still_sent(apns, settled, store) -> None:
    """The lane's first commit does not wait for the disk (a broadcast's writes made that
    wait most of a one-user notification's latency). When a crash of PostgreSQL loses it
    (the drill deletes the row), the fan-out finds its notification gone and is retried,
    not acknowledged: the user is sent the notification once."""
    url = free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0])
    token = os.urandom(32).hex()
    register_device(APP, "crash-user", "apns", token)
    lane = WorkerProcess({**ENV, "REDIS_URL": url}, queues=[TRANSACTIONAL], concurrency=1,
                         include=["tests.lostcommit"]).start()
    try:
        with app.connection_for_write(url) as conn, conn.Producer() as producer:
            one: Any = notify.apply_async((APP, ["crash-user"]), {"title": "reset your password"}, producer=producer)
        assert settled(one.id).counts == {"delivered": 1}
        assert apns.delivered_count(token) == 1
        assert f"commit lost (fault drill): notification {one.id}" in lane.log()
    finally:
        lane.stop()
        redis.Redis.from_url(url).flushdb()


def test_outcomes_a_crash_lost_are_sent_again_not_lost(apns, worker, settled, store) -> None:
    """The lane's outcomes do not wait for the disk either (behind a broadcast's flushes
    they held its worker ~10 ms a commit, and the next one-user notification queued behind
    it). When a crash loses them, the rows stay claimed; once the claim lapses the resumer
    (the session's beat) sends again: the user gets a duplicate, never nothing, and the
    row ends delivered."""
    url = free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0])
    token = os.urandom(32).hex()
    register_device(APP, "lost-outcome", "apns", token)
    lane = WorkerProcess({**ENV, "REDIS_URL": url, "LOST_COMMIT": "record"}, queues=[TRANSACTIONAL], concurrency=1,
                         include=["tests.lostcommit"]).start()
    try:
        with app.connection_for_write(url) as conn, conn.Producer() as producer:
            one: Any = notify.apply_async((APP, ["lost-outcome"]), {"title": "reset your password"},
                                          producer=producer)
        assert settled(one.id, timeout=60).counts == {"delivered": 1}
        assert apns.delivered_count(token) == 2  # the documented cost: one duplicate
        assert f"commit lost (fault drill): the outcomes of notification {one.id}" in lane.log()
    finally:
        lane.stop()
        redis.Redis.from_url(url).flushdb()


def test_a_retry_on_the_lane_waits_for_the_disk(apns, worker, settled, store) -> None:
    """An outcome that leaves work owed (here a 503, to be retried) is written as a
    broadcast's is, waiting for the disk: its flush keeps the notification with it after
    the task is acknowledged. The drill that loses the lane's asynchronous outcomes finds
    nothing to lose, and the device is sent twice: the 503, then the retry."""
    url = free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0])
    token = os.urandom(32).hex()
    register_device(APP, "retried", "apns", token)
    apns.script(token, "failing", status=503, times=1)
    lane = WorkerProcess({**ENV, "REDIS_URL": url, "LOST_COMMIT": "record"}, queues=[TRANSACTIONAL], concurrency=1,
                         include=["tests.lostcommit"]).start()
    try:
        with app.connection_for_write(url) as conn, conn.Producer() as producer:
            one: Any = notify.apply_async((APP, ["retried"]), {"title": "reset your password"}, producer=producer)
        assert settled(one.id, timeout=60).counts == {"delivered": 1}
        assert apns.delivered_count(token) == 1 and len([r for r in apns.records if r.token == token]) == 2
        assert "commit lost (fault drill)" not in lane.log()
    finally:
        lane.stop()
        redis.Redis.from_url(url).flushdb()


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (a prefork worker's pool, once forked)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    return found
