"""A critical category (``security`` in the suite's apps file: confirm within 600 s, then a
Celery task and a webhook): a user with no device Delivered in the window reaches the
fallback exactly once, with the reason; a user reached by push does not."""

from __future__ import annotations

import json
import os

import pytest
import redis
from click.testing import CliRunner

from harness.worker import WorkerProcess
from notifier import register_device
from notifier.cli import main as cli
from tests.fallback_target import CALLS
from tests.integration.conftest import ENV, SIMS, wait_until

APP = "testapp"


@pytest.fixture
def target(tmp_path):
    """The application's own worker, consuming the fallback queue; the calls it recorded."""
    client = redis.Redis.from_url(ENV["REDIS_URL"])
    client.delete(CALLS)
    SIMS["hook"].bodies.clear()
    w = WorkerProcess(ENV, queues=["fallback-test"], include=["tests.fallback_target"],
                      log_path=tmp_path / "fallback-worker.log").start()
    yield lambda: [json.loads(c) for c in client.lrange(CALLS, 0, -1)]
    w.stop()
    client.close()


def resume_runs(store) -> int:
    with store.pool.connection() as conn:
        row = conn.execute("SELECT runs FROM periodic_runs WHERE job = 'resume'").fetchone()
    return row[0] if row else 0


def window_passes(store, nid: str) -> None:
    with store.pool.connection() as conn:
        conn.execute("UPDATE fallbacks SET due_at = now() WHERE notification_id = %s", (nid,))


def test_a_user_whose_only_device_is_dead_reaches_the_fallback_once(store, apns, worker, settled, target) -> None:
    from workers import notify

    alive, dead = os.urandom(32).hex(), os.urandom(32).hex()
    register_device(APP, "alive", "apns", alive)
    register_device(APP, "dead-only", "apns", dead)
    apns.script(dead, "dead")
    nid = notify.delay(APP, ["alive", "dead-only", "no-device"], title="New sign-in", body="Was it you?",
                       category="security").id
    st = settled(nid)
    assert st.counts == {"delivered": 1, "dead": 1}
    assert {(f.user_id, f.status) for f in st.fallbacks} == {(u, "waiting") for u in ("alive", "dead-only",
                                                                                      "no-device")}
    window_passes(store, nid)  # ten minutes on
    wait_until(lambda: len(target()) == 2 and len(SIMS["hook"].bodies) == 2, what="both fallbacks taken")
    calls = {c["user"]: c for c in target()}
    assert {u: c["reason"] for u, c in calls.items()} == {"dead-only": "every device dead", "no-device": "no device"}
    assert calls["no-device"]["title"] == "New sign-in" and calls["no-device"]["key"] == f"{nid}:no-device"
    hooked = {body["user"]: (body["reason"], key) for body, key in SIMS["hook"].bodies}
    assert hooked == {"dead-only": ("every device dead", f"{nid}:dead-only"),
                      "no-device": ("no device", f"{nid}:no-device")}

    # exactly once: the window passing again and two more resumer runs dispatch nothing
    window_passes(store, nid)
    runs = resume_runs(store)
    wait_until(lambda: resume_runs(store) >= runs + 2, what="two more resumer runs")
    assert len(target()) == 2 and len(SIMS["hook"].bodies) == 2
    st = wait_until(lambda: (s := store.status(nid)) and sum(f.detail == "webhook 200" for f in s.fallbacks) == 2
                    and s, what="the webhook's answers recorded")
    assert {(f.user_id, f.status, f.detail) for f in st.fallbacks} == {
        ("alive", "confirmed", None), ("dead-only", "sent", "webhook 200"), ("no-device", "sent", "webhook 200")}
    out = CliRunner().invoke(cli, ["status", nid])
    assert "every device dead" in out.output and "no device" in out.output and "confirmed" in out.output


def test_a_webhook_refusing_for_good_is_recorded_failed(store, worker, settled, target) -> None:
    from workers import notify

    SIMS["hook"].answer = 410
    try:
        nid = notify.delay(APP, ["nobody"], title="New sign-in", category="security").id
        settled(nid)
        window_passes(store, nid)
        st = wait_until(lambda: (s := store.status(nid)) and s.fallbacks and s.fallbacks[0].detail == "webhook 410"
                        and s, what="the webhook's answer")
    finally:
        SIMS["hook"].answer = 200
    assert (st.fallbacks[0].status, st.fallbacks[0].reason) == ("failed", "no device")
    wait_until(lambda: target(), what="the task target's call")
    assert [c["user"] for c in target()] == ["nobody"]  # the task target still had it, once


def test_cancelling_a_critical_notification_cancels_its_fallbacks(store, worker, settled, target) -> None:
    from click.testing import CliRunner as Runner

    from workers import notify

    nid = notify.delay(APP, ["nobody-2"], title="New sign-in", category="security").id
    assert [f.status for f in settled(nid).fallbacks] == ["waiting"]
    assert Runner().invoke(cli, ["cancel", nid]).exit_code == 0
    window_passes(store, nid)
    runs = resume_runs(store)
    wait_until(lambda: resume_runs(store) >= runs + 2, what="two more resumer runs")
    assert [f.status for f in store.status(nid).fallbacks] == ["cancelled"] and target() == []
