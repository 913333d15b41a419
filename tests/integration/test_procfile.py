"""The whole Procfile, started with honcho as an operator would: every pool, beat and the
exporter, on a database and a broker of their own. A send through them is counted on
``/metrics`` exactly as the simulators received it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.services import create_database, drop_database, free_port, free_redis_db
from harness.worker import ROOT, ExporterProcess
from notifier import register_device
from notifier.migrate import migrate
from notifier.store import Store
from tests.integration.conftest import ENV, wait_until
from tests.integration.test_hygiene import fcm_token
from tests.integration.test_metrics import sends
from workers.priority import autogroup_enabled

APP = "testapp"


@pytest.fixture
def procfile(tmp_path: Path) -> Iterator[tuple[dict[str, str], Store, int]]:
    server = ENV["DATABASE_URL"].rsplit("/", 1)[0]
    name = f"notifier_procfile_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    migrate(url)
    port = free_port()
    env = {**os.environ, **ENV, "DATABASE_URL": url,
           "REDIS_URL": free_redis_db(ENV["REDIS_URL"].rsplit("/", 1)[0]),
           "NOTIFIER_METRICS_DIR": str(tmp_path / "metrics"), "NOTIFIER_METRICS_PORT": str(port),
           "NOTIFIER_BEAT_SCHEDULE": str(tmp_path / "beat-schedule"),
           "NOTIFIER_HTTP_HOST": "127.0.0.1", "NOTIFIER_HTTP_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           # one process a pool: nine Celery processes on a two-core machine
           **{f"{pool}_CONCURRENCY": "1" for pool in ("NOTIFY", "TRANSACTIONAL", "WEBPUSH", "APNS", "FCM")},
           "MAINTENANCE_CONCURRENCY": "2"}
    log = open(tmp_path / "honcho.log", "wb")  # closed below, after honcho stops
    honcho = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f", str(ROOT / "Procfile")],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    store = Store(url)
    try:
        yield env, store, port
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(10)
        log.close()
        store.close()
        r = redis.Redis.from_url(env["REDIS_URL"])
        r.flushdb()
        r.close()
        drop_database(server, name)


def test_the_procfile_sends_and_its_exporter_counts_what_the_simulators_received(
        procfile: Any, webpush: Any, apns: Any, fcm: Any) -> None:
    env, store, metrics_port = procfile
    subs = [webpush.subscribe() for _ in range(3)]
    ios = [os.urandom(32).hex() for _ in range(4)]
    android = [fcm_token() for _ in range(5)]
    users = []
    for prefix, platform, tokens in (("w", "webpush", subs), ("i", "apns", ios), ("a", "fcm", android)):
        for i, t in enumerate(tokens):
            register_device(APP, f"p{prefix}{i}", platform, t, store=store)
            users.append(f"p{prefix}{i}")
    to = [arg for u in users for arg in ("--user", u)]
    sent = subprocess.run([str(Path(sys.executable).parent / "notifier"), "send", APP, *to,
                           "--title", "through the Procfile", "--json", "--timeout", "120"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert sent.returncode == 0, sent.stderr + sent.stdout
    assert json.loads(sent.stdout)["counts"] == {"delivered": 12}
    received = {"webpush": sum(webpush.delivered_count(s) for s in subs),
                "apns": sum(apns.delivered_count(t) for t in ios),
                "fcm": sum(fcm.delivered_count(t) for t in android)}
    assert received == {"webpush": 3, "apns": 4, "fcm": 5}
    # under honcho (each entry a session of its own, led by its `sh -c`) a niced pool yields
    # to the other sessions too (workers.priority); the transactional lane does not yield
    if autogroup_enabled():
        assert {pool: _autogroup_nice(pool) for pool in ("apns", "notify", "transactional")} == {
            "apns": {10}, "notify": {10}, "transactional": {0}}
    exporter = ExporterProcess(env, metrics_port)  # not started: the Procfile's serves this port

    def scraped() -> dict[Any, float] | None:
        try:
            return exporter.scrape()
        except OSError:  # the exporter is still starting
            return None

    counted = wait_until(scraped, what="the exporter to answer")
    api = f"http://127.0.0.1:{env['NOTIFIER_HTTP_PORT']}/openapi.json"  # the web process answers too
    assert wait_until(lambda: _answers(api), what="the HTTP API") == 200
    assert {c: sends(counted, c, "delivered") for c in received} == received


def _answers(url: str) -> int | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except OSError:
        return None


def _autogroup_nice(queue: str) -> set[int]:
    """The autogroup nice values of the worker processes consuming ``queue``."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if b"worker" in args and args[args.index(b"-Q") + 1] == queue.encode():
                found.add(int((proc / "autogroup").read_text().split()[-1]))
        except (OSError, ValueError):  # a process that ended, or not a worker
            continue
    return found
