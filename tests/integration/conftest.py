"""Integration fixtures: real Redis, PostgreSQL, a real Celery worker subprocess and the
simulators over loopback.

At import (before any test module imports ``workers``) this creates the run's own
PostgreSQL database and picks an empty Redis db, starting throwaway servers when the
configured ones don't answer; all of it is dropped when the run ends.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import psycopg
import pytest
import redis

from harness.services import create_database, drop_database, ensure_services, free_redis_db
from notifier.cli import main as cli_main  # noqa: F401  (import check: the CLI loads)
from notifier.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL
from notifier.migrate import migrate
from simulators.tls import ca_path

T = TypeVar("T")

_stack = ExitStack()
ENV: dict[str, str] = {}
SIMS: dict[str, Any] = {}
# (fault, devices, delivered, lost, duplicates), printed at the end of the run
FAULT_TABLE: list[tuple[str, int, int, int, int, float]] = []
KEYS: dict[str, str] = {}
APNS_TEAM, APNS_KEY_ID, APNS_TOPIC = "TEAM123456", "KEYID12345", "com.example.test"
FCM_PROJECT = "notifier-test"


class Webhook:
    """A loopback HTTP endpoint recording each POSTed JSON body: the critical category's
    fallback webhook (``[apps.testapp.categories.security]``). ``answer`` is its status."""

    def __init__(self) -> None:
        import http.server

        self.bodies: list[tuple[dict[str, Any], str | None]] = []
        self.answer = 200
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.bodies.append((body, self.headers.get("Idempotency-Key")))
                self.send_response(hook.answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fallback"

    def start(self) -> "Webhook":
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _setup() -> None:
    redis_base, pg_server = ensure_services(
        os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), _stack
    )
    dbname = f"notifier_test_{uuid.uuid4().hex[:10]}"
    database_url = create_database(pg_server, dbname)
    _stack.callback(drop_database, pg_server, dbname)
    redis_url = free_redis_db(redis_base)
    _stack.callback(lambda: redis.Redis.from_url(redis_url).flushdb())

    tmp = Path(tempfile.mkdtemp(prefix="notifier-test-"))
    from py_vapid import Vapid02

    from simulators.apns import ApnsSimulator, generate_signing_key
    from simulators.fcm import FcmSimulator
    from simulators.webpush import WebPushSimulator

    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp / "vapid.pem"))
    private_pem, public_pem = generate_signing_key()
    (tmp / "apns.p8").write_text(private_pem)
    (tmp / "unknown.p8").write_text(generate_signing_key()[0])  # a key the simulator never heard of
    SIMS["webpush"] = WebPushSimulator().start()
    SIMS["webpush2"] = WebPushSimulator().start()  # a second push service: another origin
    SIMS["apns"] = ApnsSimulator(APNS_TEAM, {APNS_KEY_ID: public_pem}).start()
    SIMS["fcm"] = FcmSimulator(project_id=FCM_PROJECT).start()
    SIMS["hook"] = Webhook().start()
    (tmp / "fcm.json").write_text(json.dumps(SIMS["fcm"].service_account_info()))
    for sim in SIMS.values():
        _stack.callback(sim.stop)
    apns = SIMS["apns"]
    (tmp / "apps.toml").write_text(f"""
[apps.testapp]
time_zone = "Europe/Paris"

[apps.testapp.categories.digest]
quiet_hours = "defer"

[apps.testapp.categories.promo]
quiet_hours = "drop"
cap = 2
cap_window = 3600

[apps.testapp.categories.security]
quiet_hours = "ignore"
critical = true
confirm_within = 600
fallback_task = "tests.record_fallback"
fallback_queue = "fallback-test"
fallback_webhook = "{SIMS['hook'].url}"

[apps.testapp.webpush]
vapid_private_key_file = "vapid.pem"
vapid_subject = "mailto:ops@example.com"

[apps.testapp.apns]
topic = "{APNS_TOPIC}"
key_file = "apns.p8"
key_id = "{APNS_KEY_ID}"
team_id = "{APNS_TEAM}"
endpoint = "{apns.base_url}"

[apps.testapp.fcm]
service_account_file = "fcm.json"
endpoint = "{SIMS['fcm'].base_url}"

[apps.wrongkey.apns]
topic = "{APNS_TOPIC}"
key_file = "unknown.p8"
key_id = "{APNS_KEY_ID}"
team_id = "{APNS_TEAM}"
endpoint = "{apns.base_url}"
""")
    KEYS["apns"] = private_pem
    KEYS["fcm_file"] = str(tmp / "fcm.json")
    ENV.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        NOTIFIER_APPS=str(tmp / "apps.toml"),
        NOTIFIER_CA_BUNDLE=ca_path(),
        NOTIFIER_SEND_TIMEOUT="3",
        NOTIFIER_BATCH_SIZE="50",
        NOTIFIER_MAX_ATTEMPTS="4",
        # the mass-invalidation guard at test scale: 20 verdicts and half the app's tokens
        NOTIFIER_GUARD_MIN_VERDICTS="20",
        NOTIFIER_GUARD_SHARE="0.5",
        NOTIFIER_BREAKER_COOLDOWN="2",
        # the simulator's push service, on loopback: listed explicitly, as a self-hosted one would be
        NOTIFIER_WEBPUSH_ORIGINS=f"{SIMS['webpush'].base_url},{SIMS['webpush2'].base_url}",
        # the resumer every second, and a dispatched batch presumed lost after 5 s
        NOTIFIER_RESUME_INTERVAL="1",
        NOTIFIER_DISPATCH_GRACE="5",
        # this run's worker processes write their metrics here (the exporter sums them)
        NOTIFIER_METRICS_DIR=str(tmp / "metrics"),
    )
    os.environ.update(ENV)
    migrate(database_url)


_setup()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stack.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULT_TABLE:
        return
    tr = terminalreporter
    tr.section("fault suite: counted by the simulators")
    tr.write_line(f"| {'fault':<45} | {'devices':>7} | {'delivered':>9} | {'lost':>4} | {'duplicates':>10} "
                  f"| {'s to whole':>10} |")
    tr.write_line(f"|{'-' * 47}|{'-' * 9}|{'-' * 11}|{'-' * 6}|{'-' * 12}|{'-' * 12}|")
    for name, devices, delivered, lost, dups, seconds in FAULT_TABLE:
        tr.write_line(f"| {name:<45} | {devices:>7} | {delivered:>9} | {lost:>4} | {dups:>10} | {seconds:>10.1f} |")


def wait_until(check: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll a condition with a deadline (a database row, a count); never a bare sleep."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def store() -> Iterator["Store"]:
    from notifier.store import Store

    s = Store(ENV["DATABASE_URL"])
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean_tables(store: "Store") -> Iterator[None]:
    yield
    # A worker may still be in a transaction over several of these tables (begin_fanout
    # writes notifications, then reads devices); TRUNCATE locks them in its own order, and
    # PostgreSQL may then pick it as a deadlock's victim: it is tried again.
    for attempt in range(5):
        try:
            with store._pool.connection() as conn:
                conn.execute("TRUNCATE devices, notifications, deliveries, stale_tokens, topic_subscriptions,"
                             " removed_devices, sweep_holds, sweep_cursor, periodic_runs, user_prefs, fallbacks,"
                             " api_tokens RESTART IDENTITY")
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise


def _fresh(name: str) -> Iterator[Any]:
    """A session simulator with no records, scripts or outage, before and after the test."""
    sim = SIMS[name]
    sim.reset()
    yield sim
    sim.reset()


@pytest.fixture
def webpush() -> Iterator["WebPushSimulator"]:
    yield from _fresh("webpush")


@pytest.fixture
def webpush2() -> Iterator["WebPushSimulator"]:
    """Another push service (another origin) beside ``webpush``: one browser vendor's."""
    yield from _fresh("webpush2")


@pytest.fixture
def fcm() -> Iterator["FcmSimulator"]:
    yield from _fresh("fcm")


@pytest.fixture
def apns() -> Iterator["ApnsSimulator"]:
    yield from _fresh("apns")


@pytest.fixture(scope="session")
def worker() -> Iterator["WorkerProcess"]:
    from harness.worker import BeatProcess, WorkerProcess

    w = WorkerProcess(dict(ENV), concurrency=2).start()
    beat = BeatProcess(dict(ENV)).start()  # retries and recovery wait for its resume_owed
    yield w
    beat.stop()
    w.stop()
    if os.environ.get("NOTIFIER_TEST_SHOW_WORKER_LOG"):
        print(w.log())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def api_server() -> Iterator[str]:
    """``notifier serve``, as the Procfile runs it, for the run: its base URL."""
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="notifier-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "notifier"), "serve", "--port", str(port)],
                            env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, Path(log.name).read_text()
        try:
            with urllib.request.urlopen(url + "/openapi.json", timeout=1):
                return True
        except OSError:
            return False

    wait_until(up, timeout=30, what="notifier serve")
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture
def settled(store: "Store") -> Callable[..., "Status"]:
    """Wait until a notification's fan-out is done and no delivery is still owed."""

    def wait(nid: str, timeout: float = 30.0) -> "Status":
        return wait_until(lambda: (st := store.status(nid)) and st.settled and st, timeout, f"{nid} to settle")

    return wait


if False:  # for type checkers only
    from harness.worker import WorkerProcess
    from simulators.apns import ApnsSimulator
    from simulators.fcm import FcmSimulator
    from notifier.store import Status, Store
    from simulators.webpush import WebPushSimulator
