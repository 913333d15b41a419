"""Scheduled sends wait in PostgreSQL: an instant, or a wall-clock time in each user's
time zone, released by ``resume_owed`` in pages; ``notifier cancel`` until release.

The clock is moved as far as the store knows: the test brings the scheduled rows' due
times (or the notification's release) forward to now, as if that much time had passed,
and the real worker and beat do the rest.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from notifier import InvalidNotification, register_device, set_preferences
from notifier.cli import main as cli
from tests.integration.conftest import wait_until

APP = "testapp"
ZONES = {"tokyo": "Asia/Tokyo", "london": "Europe/London", "newyork": "America/New_York"}


def next_local(clock: time, zone: str, now: datetime) -> datetime:
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    at = datetime.combine(local.date(), clock, tz)
    if at <= now:
        at = datetime.combine(local.date() + timedelta(days=1), clock, tz)
    return at.astimezone(UTC)


def rows(store, nid: str) -> dict[int, tuple[str, datetime, str | None]]:
    with store.pool.connection() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT device_id, status, due_at, reason FROM deliveries WHERE notification_id = %s", (nid,))}


def advance_to(store, nid: str, when: datetime) -> None:
    """The clock moves on to ``when`` for this notification's waiting rows."""
    with store.pool.connection() as conn:
        conn.execute("UPDATE deliveries SET due_at = due_at - (%s - now()) WHERE notification_id = %s"
                     " AND status = 'scheduled'", (when, nid))


def fanned_out(store, nid: str):
    return wait_until(lambda: (st := store.status(nid)) and st.fanout_done and st, what=f"{nid} fanned out")


@pytest.mark.parametrize("audience", ["users", "everyone"])
def test_eight_local_reaches_three_zones_each_at_its_eight(store, apns, worker, audience) -> None:
    from workers import notify

    tokens, ids = {}, {}
    for user, zone in ZONES.items():
        tokens[user] = os.urandom(32).hex()
        ids[user] = register_device(APP, user, "apns", tokens[user])
        set_preferences(APP, user, time_zone=zone)
    before = datetime.now(UTC)
    who = {"users": list(ZONES)} if audience == "users" else {"everyone": True}  # a broadcast: page by page
    nid = notify.delay(APP, **who, title="good morning", send_at="08:00").id
    after = datetime.now(UTC)
    assert fanned_out(store, nid).counts == {"scheduled": 3}
    due = {user: rows(store, nid)[ids[user]][1] for user in ZONES}
    for user, zone in ZONES.items():  # 08:00 on each user's own clock, the next one
        assert due[user] in {next_local(time(8), zone, before), next_local(time(8), zone, after)}, user
        assert due[user].astimezone(ZoneInfo(zone)).time() == time(8)
    assert "scheduled for" in rows(store, nid)[ids["tokyo"]][2]
    order = sorted(ZONES, key=lambda u: due[u])
    for i, user in enumerate(order):  # zone by zone: each released at its 08:00, the others still waiting
        advance_to(store, nid, due[user])
        wait_until(lambda u=user: apns.delivered_count(tokens[u]) == 1, what=f"{user} reached at 08:00")
        assert [apns.delivered_count(tokens[u]) for u in order[i + 1:]] == [0] * (len(order) - i - 1)
        due = {u: rows(store, nid)[ids[u]][1] for u in ZONES}
    st = wait_until(lambda: (s := store.status(nid)) and s.settled and s.counts.get("scheduled") is None and s)
    assert st.counts == {"delivered": 3}
    assert sum(apns.delivered_count(t) for t in tokens.values()) == 3


def test_an_instant_waits_and_its_audience_is_read_at_release(store, apns, worker) -> None:
    from workers import notify

    early = os.urandom(32).hex()
    register_device(APP, "sched-a", "apns", early)
    nid = notify.delay(APP, ["sched-a", "sched-b"], title="later", send_at=datetime.now(UTC) + timedelta(hours=3)).id
    st = store.status(nid)
    assert st is not None and not st.fanout_done and st.counts == {}
    late = os.urandom(32).hex()
    register_device(APP, "sched-b", "apns", late)  # registered after the call, before the release
    with store.pool.connection() as conn:  # three hours pass
        conn.execute("UPDATE notifications SET release_at = now(), fanout_until = now() WHERE id = %s", (nid,))
    wait_until(lambda: (s := store.status(nid)) and s.settled and s.counts == {"delivered": 2}, timeout=30,
               what="the release")
    assert apns.delivered_count(early) == apns.delivered_count(late) == 1


def test_cancel_before_release_and_after_part_of_it(store, apns, worker) -> None:
    from workers import notify

    token = os.urandom(32).hex()
    register_device(APP, "cancel-me", "apns", token)
    nid = notify.delay(APP, ["cancel-me"], title="never", send_at=datetime.now(UTC) + timedelta(hours=1)).id
    out = CliRunner().invoke(cli, ["cancel", nid, "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == {"id": nid, "before_release": True, "cancelled": 0}
    with store.pool.connection() as conn:
        conn.execute("UPDATE notifications SET release_at = now(), fanout_until = now() WHERE id = %s", (nid,))

    # a local-time send: the first zone released, then cancelled; the other two never go
    tokens, ids = {}, {}
    for user, zone in ZONES.items():
        tokens[user] = os.urandom(32).hex()
        ids[user] = register_device(APP, f"c-{user}", "apns", tokens[user])
        set_preferences(APP, f"c-{user}", time_zone=zone)
    part = notify.delay(APP, [f"c-{u}" for u in ZONES], title="partly", send_at="08:00").id
    fanned_out(store, part)
    due = {u: rows(store, part)[ids[u]][1] for u in ZONES}
    first = min(ZONES, key=lambda u: due[u])
    advance_to(store, part, due[first])
    wait_until(lambda: apns.delivered_count(tokens[first]) == 1, what="the first zone")
    out = CliRunner().invoke(cli, ["cancel", part])
    assert out.exit_code == 0 and "2 deliveries (and fallbacks) not sent" in out.output, out.output
    assert sorted(s for s, _, _ in rows(store, part).values()) == ["cancelled", "cancelled", "delivered"]
    out = CliRunner().invoke(cli, ["cancel", part])
    assert out.exit_code == 1 and "nothing left to cancel" in out.output
    # the first notification, released after its cancel, never fanned out
    assert store.status(nid).counts == {} and apns.delivered_count(token) == 0
    assert sum(apns.delivered_count(tokens[u]) for u in ZONES) == 1


@pytest.mark.parametrize("send_at, why", [
    ("25:00", "HH:MM"), ("tomorrow", "HH:MM"), (datetime.now(UTC) + timedelta(days=400), "a year"), (42, "datetime"),
])
def test_a_bad_send_at_is_refused_and_nothing_stored(store, send_at, why) -> None:
    from workers import notify

    with store.pool.connection() as conn:
        before = conn.execute("SELECT count(*) FROM notifications").fetchone()[0]
    with pytest.raises(InvalidNotification, match=why):
        notify.delay(APP, ["u"], title="t", send_at=send_at)
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM notifications").fetchone()[0] == before


def test_rows_the_rules_have_not_judged_are_never_released(store, apns, worker) -> None:
    """A fan-out that died between writing a page and judging it: its rows wait as
    'judging'; the resumer sends none of them, however long past the dispatch grace."""
    from notifier.api import prepare_notify

    token = os.urandom(32).hex()
    dev = register_device(APP, "sleepy", "apns", token)
    request = prepare_notify(APP, ["sleepy"], title="08:00 news", send_at="08:00")
    store.create_notification(request, grace=0)
    with store.pool.connection() as conn:  # the rows as that fan-out left them, long ago, with its lease lapsed
        conn.execute("UPDATE notifications SET fanout_done_at = now() WHERE id = %s", (request.id,))
    store.add_users(request.id, APP, ["sleepy"], -3600, judged=False)
    runs = _resume_runs(store)
    wait_until(lambda: _resume_runs(store) >= runs + 2, what="two resumer runs")
    assert rows(store, request.id)[dev][0] == "judging" and apns.delivered_count(token) == 0


def _resume_runs(store) -> int:
    with store.pool.connection() as conn:
        row = conn.execute("SELECT runs FROM periodic_runs WHERE job = 'resume'").fetchone()
    return row[0] if row else 0
