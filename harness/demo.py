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
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from harness.services import ServiceUnavailable, scratch
from notifier.migrate import migrate
from simulators.apns import ApnsSimulator, generate_signing_key
from simulators.fcm import FcmSimulator
from simulators.tls import ca_path
from simulators.webpush import WebPushSimulator

if TYPE_CHECKING:
    from harness.worker import ExporterProcess

APP = "demo"
WAIT_SECONDS = 120.0
APNS_TEAM, APNS_KEY_ID, APNS_TOPIC = "DEMOTEAM01", "DEMOKEY001", "com.example.demo"


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


def _write_apps(tmp: Path, apns: ApnsSimulator, apns_key: str, fcm: FcmSimulator) -> None:
    from py_vapid import Vapid02

    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp / "vapid.pem"))
    (tmp / "apns.p8").write_text(apns_key)
    (tmp / "firebase.json").write_text(json.dumps(fcm.service_account_info()))
    (tmp / "apps.toml").write_text(f"""
[apps.{APP}.webpush]
vapid_private_key_file = "vapid.pem"
vapid_subject = "mailto:demo@example.com"

[apps.{APP}.apns]
topic = "{APNS_TOPIC}"
key_file = "apns.p8"
key_id = "{APNS_KEY_ID}"
team_id = "{APNS_TEAM}"
endpoint = "{apns.base_url}"

[apps.{APP}.fcm]
service_account_file = "firebase.json"
endpoint = "{fcm.base_url}"
""")


def _fcm_round(sim: FcmSimulator, users: int) -> tuple[list[str], dict[str, str]]:
    """Register Android users; every other one also has an uninstalled app instance."""
    from notifier import register_device

    expected: dict[str, str] = {}
    names = []
    for i in range(users):
        user = f"android-user-{i}"
        names.append(user)
        token = "demo-" + os.urandom(24).hex()
        register_device(APP, user, "fcm", token)
        expected[token] = "live"
        if i % 2 == 1:
            dead = "demo-" + os.urandom(24).hex()
            sim.script(dead, "unregistered")
            register_device(APP, user, "fcm", dead)
            expected[dead] = "dead"
    return names, expected


def _apns_round(sim: ApnsSimulator, users: int) -> tuple[list[str], dict[str, str]]:
    """Register iPhone users, a third of them with a second, uninstalled device."""
    from notifier import register_device

    expected: dict[str, str] = {}
    names = []
    for i in range(users):
        user = f"ios-user-{i}"
        names.append(user)
        token = os.urandom(32).hex()
        register_device(APP, user, "apns", token)
        expected[token] = "live"
        if i % 3 == 0:
            dead = os.urandom(32).hex()
            sim.script(dead, "dead")
            register_device(APP, user, "apns", dead)
            expected[dead] = "dead"
    return names, expected


def _summarise(statuses: dict[str, list[int]], ok: int, dead: set[int], expected: dict[str, str],
               counts: dict[str, int]) -> ChannelSummary:
    """Ground truth from what a simulator answered, per device, against what was recorded."""
    delivered = sum(1 for e in expected if ok in statuses.get(e, []))
    dead_n = sum(1 for e in expected if dead & set(statuses.get(e, [])))
    return ChannelSummary(
        devices=len(expected),
        delivered=delivered,
        dead=dead_n,
        failed=len(expected) - delivered - dead_n,
        duplicates=sum(max(0, statuses.get(e, []).count(ok) - 1) for e in expected),
        recorded_delivered=counts.get("delivered", 0),
        recorded_dead=counts.get("dead", 0),
        recorded_failed=sum(v for k, v in counts.items() if k not in ("delivered", "dead")),
        expected_live=sum(1 for v in expected.values() if v == "live"),
        expected_dead=sum(1 for v in expected.values() if v == "dead"),
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
        _SUBS[sub["endpoint"]] = sub
        if i % 2 == 0:  # every other user also has a browser that unsubscribed
            dead = sim.subscribe()
            sim.script(dead, "gone" if i % 4 == 0 else "not_found")
            register_device(APP, user, "webpush", dead)
            expected[dead["endpoint"]] = "dead"
    return names, expected


def run_demo(*, as_json: bool = False, users: int = 5, log_level: str = "WARNING", workdir: Path | None = None) -> int:
    """Run the demo; with ``workdir``, keys, logs and the devices it registered are kept there."""
    console = Console(stderr=True)
    tmp = workdir or Path(tempfile.mkdtemp(prefix="notifier-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=log_level, filename=str(tmp / "demo.log"))
    from notifier.logs import secure_logging

    secure_logging()
    with ExitStack() as stack:
        try:
            database_url, redis_url = scratch(stack, "notifier_demo")
        except ServiceUnavailable as exc:
            console.print(f"[red]cannot run the demo:[/] {exc}")
            return 2
        apns_key, apns_public = generate_signing_key()
        webpush = stack.enter_context(WebPushSimulator())
        apns = stack.enter_context(ApnsSimulator(APNS_TEAM, {APNS_KEY_ID: apns_public}))
        fcm = stack.enter_context(FcmSimulator(project_id="notifier-demo"))
        _write_apps(tmp, apns, apns_key, fcm)
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "NOTIFIER_APPS": str(tmp / "apps.toml"),
               "NOTIFIER_CA_BUNDLE": ca_path(), "NOTIFIER_WEBPUSH_ORIGINS": webpush.base_url,
               "NOTIFIER_METRICS_DIR": str(tmp / "metrics")}
        os.environ.update(env)
        migrate(database_url)

        from harness.services import free_port  # noqa: I001
        from harness.worker import BeatProcess, ExporterProcess, WorkerProcess
        from notifier.api import default_store
        from workers import app as celery_app, notify

        stack.callback(lambda: celery_app.connection_for_write().default_channel.client.flushdb())
        worker = stack.enter_context(WorkerProcess(env, concurrency=2, loglevel=log_level,
                                                   log_path=tmp / "worker.log"))
        stack.enter_context(BeatProcess(env, log_path=tmp / "beat.log"))
        exporter = stack.enter_context(ExporterProcess(env, free_port(), log_path=tmp / "exporter.log"))
        console.print(f"simulators up; worker log: {worker.log_path}")

        web_users, web_expected = _webpush_round(webpush, users)
        ios_users, ios_expected = _apns_round(apns, users)
        android_users, android_expected = _fcm_round(fcm, users)
        (tmp / "devices.json").write_text(json.dumps(sorted([*web_expected, *ios_expected, *android_expected])))
        result = notify.delay(APP, web_users + ios_users + android_users, title="Your order shipped", body="It arrives Thursday.",
                              data={"order": "A-1042"}, collapse_key="order-A-1042")
        store = default_store()
        st = _wait_settled(store, result.id)
        if st is None:
            console.print(f"[red]timed out after {WAIT_SECONDS:.0f}s waiting for outcomes[/]")
            return 1
        by_platform = _counts_by_platform(store, result.id)
        web_statuses: dict[str, list[int]] = {}
        for push in webpush.records:
            web_statuses.setdefault(push.endpoint, []).append(push.status)
        apns_statuses: dict[str, list[int]] = {}
        for rec in apns.records:
            apns_statuses.setdefault(rec.token, []).append(rec.status or 0)
        fcm_statuses: dict[str, list[int]] = {}
        for req in fcm.records:
            if req.token:
                fcm_statuses.setdefault(req.token, []).append(req.status)
        summary = {
            "webpush": _summarise(web_statuses, 201, {404, 410}, web_expected, by_platform.get("webpush", {})),
            "apns": _summarise(apns_statuses, 200, {410}, ios_expected, by_platform.get("apns", {})),
            "fcm": _summarise(fcm_statuses, 200, {404}, android_expected, by_platform.get("fcm", {})),
        }
        # A second notification, to one of our topics: one live device per channel subscribes.
        subscribers = {
            "webpush": next(e for e, v in web_expected.items() if v == "live"),
            "apns": next(t for t, v in ios_expected.items() if v == "live"),
            "fcm": next(t for t, v in android_expected.items() if v == "live"),
        }
        from notifier import subscribe_topic

        for platform, tok in subscribers.items():
            subscribe_topic(APP, "news", platform, _SUBS[tok] if platform == "webpush" else tok)
        before = _delivered_counts(webpush, apns, fcm)
        topic_result = notify.delay(APP, topic="news", title="Breaking", body="Topics reach every channel.")
        if _wait_settled(store, topic_result.id) is None:
            console.print("[red]timed out waiting for the topic notification[/]")
            return 1
        after = _delivered_counts(webpush, apns, fcm)
        gained = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        wanted = set(subscribers.values())
        topic = {
            "notification_id": topic_result.id,
            "subscribers": len(wanted),
            "delivered": sum(1 for k in wanted if gained.get(k, 0) >= 1),
            "duplicates": sum(max(0, gained.get(k, 0) - 1) for k in wanted),
            "others_reached": sum(1 for k, v in gained.items() if v and k not in wanted),
        }
        topic_ok = topic["delivered"] == topic["subscribers"] and not topic["duplicates"] and not topic["others_reached"]
        metrics = _metrics(exporter, _delivered_by_channel(webpush, apns, fcm))
        ok = all(s.ok for s in summary.values()) and topic_ok and metrics["agree"]
        store.close()
        if as_json:
            print(json.dumps({"notification_id": result.id, "ok": ok,
                              "channels": {k: asdict(v) for k, v in summary.items()}, "topic": topic,
                              "metrics": metrics}, indent=2))
        else:
            _print_table(result.id, summary, ok)
            Console().print(f"topic 'news': {topic['subscribers']} subscribers (one per channel), "
                            f"{topic['delivered']} delivered, {topic['duplicates']} duplicates, "
                            f"{topic['others_reached']} non-subscribers reached")
            Console().print(f"metrics ({metrics['endpoint']}): delivered {metrics['delivered']}, simulators "
                            f"{metrics['simulators_delivered']}: {'agree' if metrics['agree'] else 'DISAGREE'}")
        return 0 if ok else 1


def _delivered_by_channel(webpush: WebPushSimulator, apns: ApnsSimulator, fcm: FcmSimulator) -> dict[str, int]:
    return {"webpush": len(webpush.delivered()), "apns": len(apns.delivered()),
            "fcm": sum(1 for r in fcm.delivered() if r.token)}


def _metrics(exporter: ExporterProcess, simulators: dict[str, int]) -> dict[str, Any]:
    """The exporter's send counters, scraped over HTTP, beside what the simulators counted."""
    import time

    deadline, samples = time.monotonic() + WAIT_SECONDS, None
    while samples is None:
        try:
            samples = exporter.scrape()
        except OSError:  # still starting
            if time.monotonic() > deadline:
                return {"endpoint": exporter.url, "agree": False, "error": "the exporter did not answer"}
            time.sleep(0.1)
    sends: dict[str, dict[str, int]] = {}
    for (name, labels), value in samples.items():
        if name == "notifier_sends_total":
            label = dict(labels)
            sends.setdefault(label["channel"], {})[label["outcome"]] = int(value)
    delivered = {c: sends.get(c, {}).get("delivered", 0) for c in simulators}
    return {"endpoint": exporter.url, "sends": sends, "delivered": delivered,
            "simulators_delivered": simulators, "agree": delivered == simulators}


def _wait_settled(store: object, nid: str) -> object | None:
    import time

    deadline = time.monotonic() + WAIT_SECONDS
    while not ((st := store.status(nid)) and st.settled):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)  # polling the outcome table with a deadline
    return st


# endpoint -> the subscription the demo registered (topics subscribe by subscription)
_SUBS: dict[str, dict[str, object]] = {}


def _delivered_counts(webpush: WebPushSimulator, apns: ApnsSimulator, fcm: FcmSimulator) -> dict[str, int]:
    """Device address -> successful deliveries the simulators answered, all channels."""
    counts: dict[str, int] = {}
    for push in webpush.delivered():
        counts[push.endpoint] = counts.get(push.endpoint, 0) + 1
    for rec in apns.delivered():
        counts[rec.token] = counts.get(rec.token, 0) + 1
    for req in fcm.delivered():
        if req.token:
            counts[req.token] = counts.get(req.token, 0) + 1
    return counts


def _counts_by_platform(store: object, nid: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with store._pool.connection() as conn:  # type: ignore[attr-defined]
        for platform, status, n in conn.execute(
            "SELECT platform, status, count(*) FROM deliveries WHERE notification_id = %s GROUP BY 1, 2", (nid,)
        ):
            out.setdefault(platform, {})[status] = n
    return out


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
