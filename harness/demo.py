"""``notifier demo``: the whole pipeline on this machine, checked against the simulators.

Starts the simulators, a real Celery worker and (where needed) throwaway Redis and
PostgreSQL, registers users with live and dead devices, sends one notification, waits
for every outcome and counts what the simulators actually received. Exit status 1
when that ground truth disagrees with what the pipeline recorded.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.services import ServiceUnavailable, create_database, drop_database, ensure_services, free_redis_db
from notifier.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL
from notifier.migrate import migrate
from simulators.tls import ca_path
from simulators.webpush import WebPushSimulator

APP = "demo"
WAIT_SECONDS = 120.0


@dataclass
class ChannelSummary:
    devices: int
    delivered: int
    dead: int
    failed: int
    duplicates: int
    # what the pipeline recorded, for comparison
    recorded_delivered: int
    recorded_dead: int
    recorded_failed: int
    # what the demo set up: every live device must be delivered, every dead one reported
    expected_live: int
    expected_dead: int

    @property
    def agrees(self) -> bool:
        return (self.recorded_delivered, self.recorded_dead, self.recorded_failed) == (
            self.delivered, self.dead, self.failed) and self.duplicates == 0

    @property
    def ok(self) -> bool:
        return self.agrees and (self.delivered, self.dead, self.failed) == (self.expected_live, self.expected_dead, 0)


def _write_apps(tmp: Path) -> None:
    from py_vapid import Vapid02

    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp / "vapid.pem"))
    (tmp / "apps.toml").write_text(
        f'[apps.{APP}.webpush]\nvapid_private_key_file = "vapid.pem"\nvapid_subject = "mailto:demo@example.com"\n'
    )


def _webpush_round(sim: WebPushSimulator, users: int) -> tuple[list[str], dict[str, str]]:
    """Register users with live and dead subscriptions; return users and endpoint -> expected."""
    from notifier import register_device

    expected: dict[str, str] = {}
    names = []
    for i in range(users):
        user = f"web-user-{i}"
        names.append(user)
        sub = sim.subscribe()
        register_device(APP, user, "webpush", sub)
        expected[sub["endpoint"]] = "live"
        if i % 2 == 0:  # every other user also has a browser that unsubscribed
            dead = sim.subscribe()
            sim.script(dead, "gone" if i % 4 == 0 else "not_found")
            register_device(APP, user, "webpush", dead)
            expected[dead["endpoint"]] = "dead"
    return names, expected


def _summarise_webpush(sim: WebPushSimulator, expected: dict[str, str], counts: dict[str, int]) -> ChannelSummary:
    by_endpoint: dict[str, list[int]] = {}
    for push in sim.received:
        by_endpoint.setdefault(push.endpoint, []).append(push.status)
    delivered = sum(1 for e in expected if 201 in by_endpoint.get(e, []))
    dead = sum(1 for e in expected if {404, 410} & set(by_endpoint.get(e, [])))
    duplicates = sum(max(0, by_endpoint.get(e, []).count(201) - 1) for e in expected)
    return ChannelSummary(
        devices=len(expected),
        delivered=delivered,
        dead=dead,
        failed=len(expected) - delivered - dead,
        duplicates=duplicates,
        recorded_delivered=counts.get("delivered", 0),
        recorded_dead=counts.get("dead", 0),
        recorded_failed=sum(v for k, v in counts.items() if k not in ("delivered", "dead")),
        expected_live=sum(1 for v in expected.values() if v == "live"),
        expected_dead=sum(1 for v in expected.values() if v == "dead"),
    )


def run_demo(*, as_json: bool = False, users: int = 5) -> int:
    console = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING)
    with ExitStack() as stack:
        try:
            redis_base, pg_server = ensure_services(
                os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
                os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), stack)
        except ServiceUnavailable as exc:
            console.print(f"[red]cannot run the demo:[/] {exc}")
            return 2
        dbname = f"notifier_demo_{uuid.uuid4().hex[:8]}"
        database_url = create_database(pg_server, dbname)
        stack.callback(drop_database, pg_server, dbname)
        redis_url = free_redis_db(redis_base)
        tmp = Path(tempfile.mkdtemp(prefix="notifier-demo-"))
        _write_apps(tmp)
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "NOTIFIER_APPS": str(tmp / "apps.toml"),
               "NOTIFIER_CA_BUNDLE": ca_path()}
        os.environ.update(env)
        migrate(database_url)

        from harness.worker import WorkerProcess
        from notifier.api import default_store
        from workers import app as celery_app, notify

        stack.callback(lambda: celery_app.connection_for_write().default_channel.client.flushdb())
        webpush = stack.enter_context(WebPushSimulator())
        worker = stack.enter_context(WorkerProcess(env, concurrency=2))
        console.print(f"simulators up; worker log: {worker.log_path}")

        web_users, web_expected = _webpush_round(webpush, users)
        result = notify.delay(APP, web_users, title="Your order shipped", body="It arrives Thursday.",
                              data={"order": "A-1042"}, collapse_key="order-A-1042")
        store = default_store()
        import time

        deadline = time.monotonic() + WAIT_SECONDS
        while not ((st := store.status(result.id)) and st.settled):
            if time.monotonic() > deadline:
                console.print(f"[red]timed out after {WAIT_SECONDS:.0f}s waiting for outcomes[/]")
                return 1
            time.sleep(0.1)  # polling the outcome table with a deadline
        summary = {"webpush": _summarise_webpush(webpush, web_expected, st.counts)}
        ok = all(s.ok for s in summary.values())
        store.close()
        if as_json:
            print(json.dumps({"notification_id": result.id, "ok": ok,
                              "channels": {k: asdict(v) for k, v in summary.items()}}, indent=2))
        else:
            _print_table(result.id, summary, ok)
        return 0 if ok else 1


def _print_table(nid: str, summary: dict[str, ChannelSummary], ok: bool) -> None:
    console = Console()
    table = Table(title=f"notification {nid}: counted by the simulators")
    for col in ("channel", "devices", "delivered", "dead", "failed", "duplicates", "pipeline agrees"):
        table.add_column(col)
    for name, s in summary.items():
        table.add_row(name, str(s.devices), str(s.delivered), str(s.dead), str(s.failed), str(s.duplicates),
                      "yes" if s.agrees else "[red]NO[/]")
    console.print(table)
    console.print("[green]every live device delivered exactly once, every dead one reported[/]" if ok
                  else "[red]the pipeline and the simulators disagree[/]")
