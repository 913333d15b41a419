"""Metrics: what the exporter serves, scraped over HTTP, against what the simulators received."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from harness.services import free_port
from harness.worker import ExporterProcess
from notifier import register_device
from tests.integration.conftest import ENV, wait_until
from tests.integration.test_hygiene import fcm_token
from workers import notify

APP = "testapp"


@pytest.fixture(scope="module")
def exporter() -> Iterator[ExporterProcess]:
    proc = ExporterProcess(dict(ENV), free_port()).start()

    def answers() -> bool:
        try:
            return bool(proc.scrape() is not None)
        except OSError:
            return False

    wait_until(answers, what="the exporter to answer")
    yield proc
    proc.stop()


def sends(samples: dict[Any, float], channel: str, outcome: str) -> float:
    key = ("notifier_sends_total", (("app", APP), ("channel", channel), ("outcome", outcome)))
    return samples.get(key, 0.0)


def test_send_counters_equal_what_the_simulators_received(exporter, webpush, apns, fcm, worker, settled) -> None:
    subs = [webpush.subscribe() for _ in range(4)]
    ios = [os.urandom(32).hex() for _ in range(5)]
    android = [fcm_token() for _ in range(6)]
    apns.script(ios[0], "dead")  # one dead token: a verdict counted
    users = []
    for prefix, platform, tokens in (("w", "webpush", subs), ("i", "apns", ios), ("a", "fcm", android)):
        for i, t in enumerate(tokens):
            register_device(APP, f"m{prefix}{i}", platform, t)
            users.append(f"m{prefix}{i}")
    before = exporter.scrape()
    settled(notify.delay(APP, users, title="metrics").id)
    after = exporter.scrape()
    received = {"webpush": sum(webpush.delivered_count(s) for s in subs),
                "apns": sum(apns.delivered_count(t) for t in ios),
                "fcm": sum(fcm.delivered_count(t) for t in android)}
    counted = {c: sends(after, c, "delivered") - sends(before, c, "delivered") for c in received}
    assert counted == received == {"webpush": 4, "apns": 4, "fcm": 6}
    assert sends(after, "apns", "dead") - sends(before, "apns", "dead") == 1
    verdict = ("notifier_dead_tokens_total", (("app", APP), ("channel", "apns"), ("kind", "dead")))
    assert after.get(verdict, 0) - before.get(verdict, 0) == 1
    latency = ("notifier_provider_latency_seconds_count", (("channel", "apns"),))
    assert after[latency] - before.get(latency, 0) == 5  # every APNs request timed
    for queue in ("notify", "apns", "webpush", "fcm", "maintenance", "transactional"):
        assert ("notifier_queue_depth", (("queue", queue),)) in after
    assert ("notifier_notifications_fanning_out", ()) in after


def test_the_dashboard_asks_only_for_what_notifier_exports(store) -> None:
    """Every metric the Grafana dashboard (workers/dashboard.json) queries is one the workers
    count (notifier/metrics.py) or the exporter reads live (workers/exporter.py)."""
    import json
    import re
    from pathlib import Path

    from notifier.config import Settings
    from notifier.metrics import _metrics
    from workers.exporter import StateCollector

    counted = {m._name for m in vars(_metrics()).values()}
    exported = {f"{n}_total" for n in counted} | {f"{n}_bucket" for n in counted}
    exported |= {family.name for family in StateCollector(Settings.current(), store).collect()}
    dashboard = json.loads((Path(__file__).parents[2] / "workers" / "dashboard.json").read_text())
    asked = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"notifier_\w+", t["expr"])}
    assert len(asked) == 9 and asked <= exported, asked - exported
