"""A user's preferences and the app's categories (the suite's apps file: ``digest`` defers
in quiet hours, ``promo`` is dropped in them and capped at 2 an hour): every device
skipped or deferred has an outcome saying why."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from harness.worker import WorkerProcess
from notifier import register_device, set_preferences
from notifier.api import prepare_notify
from tests.integration.conftest import ENV, wait_until
from tests.integration.test_schedule import advance_to, rows

APP = "testapp"


def device(user: str) -> tuple[int, str]:
    token = os.urandom(32).hex()
    return register_device(APP, user, "apns", token), token


def quiet_now(zone: str) -> tuple[tuple[str, str], datetime]:
    """Quiet hours from an hour ago to an hour from now on the user's clock, and when they end."""
    now = datetime.now(ZoneInfo(zone)).replace(second=0, microsecond=0)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    return (start.strftime("%H:%M"), end.strftime("%H:%M")), end.astimezone(UTC)


def test_quiet_hours_defer_one_category_and_drop_another(store, apns, worker, settled) -> None:
    from workers import notify

    dev, token = device("sleeper")
    window, ends = quiet_now("Asia/Tokyo")
    set_preferences(APP, "sleeper", time_zone="Asia/Tokyo", quiet_hours=window)
    digest = notify.delay(APP, ["sleeper"], title="your digest", category="digest").id
    promo = notify.delay(APP, ["sleeper"], title="50% off", category="promo").id
    login = notify.delay(APP, ["sleeper"], title="your code is 123456").id  # no category: quiet hours ignored

    assert settled(login).counts == {"delivered": 1}
    assert settled(promo).counts == {"skipped": 1} and rows(store, promo)[dev][2] == "quiet hours"
    settled(digest)
    status, due, reason = rows(store, digest)[dev]
    assert (status, reason) == ("scheduled", "deferred by quiet hours") and due == ends
    assert apns.delivered_count(token) == 1  # the login code only
    advance_to(store, digest, ends)  # the night ends
    wait_until(lambda: apns.delivered_count(token) == 2, what="the digest after quiet hours")
    titles = [r.payload["aps"]["alert"]["title"] for r in apns.delivered() if r.token == token]
    assert titles == ["your code is 123456", "your digest"]


def test_quiet_hours_in_the_apps_default_zone_and_past_midnight(store, worker, settled) -> None:
    """A user with quiet hours and no zone of their own keeps the app's (Europe/Paris); a
    window that wraps past midnight still covers now."""
    from workers import notify

    dev, _ = device("parisian")
    now = datetime.now(ZoneInfo("Europe/Paris"))
    # from a minute ago around the clock to just before: wraps past midnight unless it is 00:00
    start, end = (now - timedelta(minutes=1)).time(), (now - timedelta(minutes=2)).time()
    set_preferences(APP, "parisian", quiet_hours=(start.strftime("%H:%M"), end.strftime("%H:%M")))
    nid = notify.delay(APP, ["parisian"], title="t", category="promo").id
    assert settled(nid).counts == {"skipped": 1} and rows(store, nid)[dev][2] == "quiet hours"


def test_opted_out_users_are_skipped_and_say_so(store, apns, worker, settled) -> None:
    from workers import notify

    out_dev, out_token = device("no-promos")
    _, in_token = device("promos-ok")
    set_preferences(APP, "no-promos", opt_out=["promo", "news"])
    nid = notify.delay(APP, ["no-promos", "promos-ok"], title="sale", category="news").id
    st = settled(nid)
    assert st.counts == {"skipped": 1, "delivered": 1}
    assert rows(store, nid)[out_dev][2] == "opted out of news"
    assert apns.delivered_count(out_token) == 0 and apns.delivered_count(in_token) == 1
    set_preferences(APP, "no-promos", opt_out=[])  # opted back in
    assert settled(notify.delay(APP, ["no-promos"], title="again", category="news").id).counts == {"delivered": 1}


def test_the_frequency_cap_holds_across_two_workers(store, apns, worker, settled, tmp_path) -> None:
    """Six promos to one user at once, fanned out by two worker processes of their own,
    three each: exactly two reach the user (cap 2 an hour), four are skipped by the cap."""
    from workers.queues import TASK_FAN_OUT

    from workers.celery import app

    dev, token = device("capped")
    requests = [prepare_notify(APP, ["capped"], title=f"promo {i}", category="promo") for i in range(6)]
    workers = [WorkerProcess(ENV, queues=[f"cap-{w}"], concurrency=3, log_path=tmp_path / f"cap-{w}.log").start()
               for w in "ab"]
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda ir: app.send_task(TASK_FAN_OUT, (ir[1].to_json(),), task_id=ir[1].id,
                                                    queue=f"cap-{'ab'[ir[0] % 2]}"), enumerate(requests)))
        outcomes = [settled(r.id, timeout=60).counts for r in requests]
        logs = [w.log() for w in workers]
    finally:
        for w in workers:
            w.stop()
    assert all(f"Task {TASK_FAN_OUT}" in log and "succeeded" in log for log in logs)  # both fanned out
    assert sorted(tuple(c.items()) for c in outcomes) == [(("delivered", 1),)] * 2 + [(("skipped", 1),)] * 4
    reasons = {rows(store, r.id)[dev][2] for r in requests} - {None}
    assert reasons == {"frequency cap: 2 promo per 3600 s"}
    assert apns.delivered_count(token) == 2


def test_a_later_notification_with_the_same_collapse_key_replaces_one_not_sent(store, apns, worker,
                                                                                settled) -> None:
    from workers import notify

    dev, token = device("scores")
    set_preferences(APP, "scores", time_zone="UTC")
    first = notify.delay(APP, ["scores"], title="1-0", collapse_key="match-7", send_at="08:00").id
    wait_until(lambda: rows(store, first).get(dev, ("",))[0] == "scheduled", what="the first scheduled")
    second = notify.delay(APP, ["scores"], title="2-0", collapse_key="match-7").id
    assert settled(second).counts == {"delivered": 1}
    assert rows(store, first)[dev][:1] == ("skipped",) and rows(store, first)[dev][2] == f"collapsed into {second}"
    other = notify.delay(APP, ["scores"], title="other match", collapse_key="match-8", send_at="08:00").id
    wait_until(lambda: rows(store, other).get(dev, ("",))[0] == "scheduled", what="another key untouched")
    titles = [r.payload["aps"]["alert"]["title"] for r in apns.delivered() if r.token == token]
    assert titles == ["2-0"]


def test_prefs_and_a_scheduled_send_from_the_command_line(store) -> None:
    from click.testing import CliRunner

    from notifier.cli import main as cli

    runner = CliRunner()
    out = runner.invoke(cli, ["prefs", APP, "cli-user", "--time-zone", "Asia/Tokyo", "--quiet-hours", "22:00-07:00",
                              "--opt-out", "promo,news"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["prefs", APP, "cli-user", "--opt-out", ""])  # the rest kept
    assert out.exit_code == 0, out.output
    with store.pool.connection() as conn:
        row = conn.execute("SELECT time_zone, quiet_start::text, quiet_end::text, opted_out FROM user_prefs"
                           " WHERE app = %s AND user_id = 'cli-user'", (APP,)).fetchone()
    assert row == ("Asia/Tokyo", "22:00:00", "07:00:00", [])
    out = runner.invoke(cli, ["prefs", APP, "cli-user", "--time-zone", "Mars/Olympus"])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "time_zone" in out.output
    out = runner.invoke(cli, ["send", APP, "--user", "cli-user", "--title", "later", "--send-at", "08:00"])
    assert out.exit_code == 0 and out.output.startswith("scheduled "), out.output
    nid = out.output.split()[1]
    assert store.status(nid) is not None
