"""Token hygiene end to end: dead-token feedback from all three simulators, suppression,
the sweep, the survivors it must spare, the mass-invalidation guard, and two sweeps at once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from typing import Any

from click.testing import CliRunner

from notifier import register_device
from notifier.cli import main as cli
from notifier.config import Settings
from notifier.store import Store
from notifier.sweep import SweepReport, sweep
from tests.integration.conftest import ENV, wait_until
from workers import notify
from workers.tasks import sweep_stale_tokens

APP = "testapp"


def fcm_token() -> str:
    return "fcm-" + os.urandom(20).hex()


def device_ids(store: Store) -> set[int]:
    with store.pool.connection() as conn:
        return {r[0] for r in conn.execute("SELECT id FROM devices")}


def test_dead_tokens_are_suppressed_swept_and_survivors_spared(webpush, apns, fcm, worker, settled, store) -> None:
    # Per channel: a live device, a dead one, one re-registered after its verdict, one whose
    # message is refused (a fault of ours, never the token's).
    web = {k: webpush.subscribe() for k in ("live", "dead", "again", "fault")}
    webpush.script(web["dead"], "gone")
    webpush.script(web["again"], "gone", times=1)
    webpush.script(web["fault"], "too_large")
    ios = {k: os.urandom(32).hex() for k in ("live", "dead", "before_apple", "fault")}
    andr = {k: fcm_token() for k in ("live", "dead", "again", "fault")}
    fcm.script(andr["dead"], "unregistered")
    fcm.script(andr["again"], "unregistered", times=1)
    fcm.script(andr["fault"], "third_party_auth")
    ids = {}
    for name, sub in web.items():
        ids[f"web-{name}"] = register_device(APP, f"web-{name}", "webpush", sub)
    for name, tok in ios.items():
        ids[f"ios-{name}"] = register_device(APP, f"ios-{name}", "apns", tok)
    for name, tok in andr.items():
        ids[f"and-{name}"] = register_device(APP, f"and-{name}", "fcm", tok)
    apns.script(ios["dead"], "dead")  # Apple's timestamp: now, after the registration
    # Apple saw this app removed an hour ago, before the registration we hold: not dead.
    apns.script(ios["before_apple"], "dead", times=1, timestamp_ms=int((time.time() - 3600) * 1000))
    apns.script(ios["fault"], "bad", reason="BadCollapseId")
    users = list(ids)

    st = settled(notify.delay(APP, users, title="one").id, timeout=60)
    assert st.counts["dead"] == 6  # the verdicts: dead and again, on each channel (+ before_apple)
    register_device(APP, "web-again", "webpush", web["again"])  # the app registers them again
    register_device(APP, "and-again", "fcm", andr["again"])

    sent_before = (len(webpush.records), len(apns.records), len(fcm.records))
    st2 = settled(notify.delay(APP, users, title="two").id, timeout=60)
    # zero sends to the dead ones after the verdict
    assert webpush.records[-1] and all(p.endpoint != web["dead"]["endpoint"] for p in webpush.records[sent_before[0]:])
    assert all(r.token != ios["dead"] for r in apns.records[sent_before[1]:])
    assert all(r.token != andr["dead"] for r in fcm.records[sent_before[2]:])
    assert st2.counts["skipped"] == 3

    result = sweep_stale_tokens.delay()  # by the real worker, as beat would
    removed = {ids["web-dead"], ids["ios-dead"], ids["and-dead"]}
    from tests.integration.conftest import wait_until

    wait_until(lambda: not (device_ids(store) & removed), what="the sweep to remove the dead tokens")
    assert result.id
    survivors = set(ids.values()) - removed
    assert device_ids(store) == survivors  # re-registered, before-Apple and message faults all kept
    with store.pool.connection() as conn:
        logged = {r[0]: r[1] for r in conn.execute("SELECT device_id, cause FROM removed_devices")}
    assert logged == {i: "dead" for i in removed}

    # survivors still delivered to
    st3 = settled(notify.delay(APP, users, title="three").id, timeout=60)
    delivered_to = {f"web-{n}" for n in ("live", "again")} | {f"ios-{n}" for n in ("live", "before_apple")} | {
        f"and-{n}" for n in ("live", "again")}
    assert st3.counts["delivered"] == len(delivered_to)
    assert webpush.delivered_count(web["again"]) >= 1
    assert apns.deliveries_by_token()[ios["before_apple"]] >= 1
    assert any(r.token == andr["again"] and r.status == 200 for r in fcm.records)


def test_inactive_tokens_expire_in_the_same_sweep(store) -> None:
    old = register_device(APP, "old", "apns", os.urandom(32).hex())
    new = register_device(APP, "new", "apns", os.urandom(32).hex())
    reached = register_device(APP, "reached", "apns", os.urandom(32).hex())
    with store.pool.connection() as conn:
        conn.execute("UPDATE devices SET registered_at = now() - interval '271 days',"
                     " last_delivered_at = now() - interval '271 days' WHERE id = %s", (old,))
        # registered once, 271 days ago, and delivered to yesterday: still a subscriber
        conn.execute("UPDATE devices SET registered_at = now() - interval '271 days',"
                     " last_delivered_at = now() - interval '1 day' WHERE id = %s", (reached,))
    report = sweep(store, Settings.current())
    assert report.expired == {APP: 1} and device_ids(store) == {new, reached}
    out = CliRunner().invoke(cli, ["tokens", "--json"])
    (row,) = json.loads(out.output)
    assert (row["active"], row["expired_last_day"], row["swept_last_day"]) == (2, 1, 0)


def _mass_invalidation(fcm: Any, settled: Any, n: int = 30) -> tuple[list[int], list[str]]:
    """FCM declares 30 of the app's 35 tokens dead at once (as after a botched token
    migration, or a gateway answering for the wrong project): not users uninstalling."""
    tokens = [fcm_token() for _ in range(n)]
    for t in tokens:
        fcm.script(t, "unregistered")
    ids = [register_device(APP, f"m{i}", "fcm", t) for i, t in enumerate(tokens)]
    for i in range(5):
        register_device(APP, f"fine{i}", "fcm", fcm_token())
    settled(notify.delay(APP, [f"m{i}" for i in range(n)] + [f"fine{i}" for i in range(5)], title="t").id, timeout=60)
    return ids, tokens


def test_guard_holds_a_mass_invalidation_until_confirmed(fcm, worker, settled, store) -> None:
    ids, _ = _mass_invalidation(fcm, settled)
    runner = CliRunner()
    held = json.loads(runner.invoke(cli, ["sweep", "--json"]).output)
    assert held["held"] == {f"{APP}/fcm": 30} and held["removed_dead"] == {}
    assert set(ids) <= device_ids(store)  # nothing removed
    row = json.loads(runner.invoke(cli, ["tokens", "--json"]).output)[0]
    assert row["held"] is True and row["suppressed"] == 30 and row["active"] == 5
    assert row["oldest_unswept_verdict_seconds"] is not None
    done = json.loads(runner.invoke(cli, ["sweep", "--confirm", APP, "--json"]).output)
    assert done["removed_dead"] == {APP: 30} and not (set(ids) & device_ids(store))


def test_guard_release_sends_to_the_tokens_again(fcm, worker, settled, store) -> None:
    ids, tokens = _mass_invalidation(fcm, settled)
    runner = CliRunner()
    assert json.loads(runner.invoke(cli, ["sweep", "--json"]).output)["held"] == {f"{APP}/fcm": 30}
    fcm.reset()  # the operator fixed the sender id
    out = runner.invoke(cli, ["sweep", "--release", APP, "--json"])
    assert out.exit_code == 0, out.output
    assert set(ids) <= device_ids(store)
    st = settled(notify.delay(APP, [f"m{i}" for i in range(30)], title="again").id, timeout=60)
    assert st.counts == {"delivered": 30}
    assert {r.token for r in fcm.delivered()} >= set(tokens)


def test_two_concurrent_sweeps_leave_the_same_result_as_one(webpush, worker, settled, store) -> None:
    subs = [webpush.subscribe() for _ in range(1200)]
    for sub in subs[:1000]:
        webpush.script(sub, "gone")
    ids = [register_device(APP, f"c{i}", "webpush", sub) for i, sub in enumerate(subs)]
    settled(notify.delay(APP, [f"c{i}" for i in range(1200)], title="t").id, timeout=120)
    settings = replace(Settings.current(), guard_min_verdicts=10**9)  # not a mix-up: let it sweep
    stores = [Store(ENV["DATABASE_URL"]), Store(ENV["DATABASE_URL"])]
    reports: list[SweepReport] = []
    barrier = threading.Barrier(2)

    def run(s: Store) -> None:
        barrier.wait()
        reports.append(sweep(s, settings))

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for s in stores:
        s.close()
    assert sum(r.removed_dead.get(APP, 0) for r in reports) == 1000  # each device removed once
    assert device_ids(store) == set(ids[1000:])
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT device_id) FROM removed_devices").fetchone() == (
            1000, 1000)
        assert conn.execute("SELECT count(*) FROM stale_tokens").fetchone()[0] == 0
    again = sweep(store, settings)  # idempotent: nothing left to do
    assert again.removed_dead == {} and again.expired == {}


def test_a_verdict_that_may_be_our_misconfiguration_is_held_not_swept(apns, fcm, worker, settled, store) -> None:
    """DeviceTokenNotForTopic (our bundle id?) and SENDER_ID_MISMATCH (our project?) suppress
    the token but never remove it on their own; an operator confirms or releases."""
    ios, andr = os.urandom(32).hex(), fcm_token()
    apns.script(ios, "not_for_topic")
    fcm.script(andr, "sender_mismatch")
    ids = {register_device(APP, "ios", "apns", ios), register_device(APP, "and", "fcm", andr)}
    log_before = len(worker.log())
    st = settled(notify.delay(APP, ["ios", "and"], title="t").id)
    assert st.counts == {"failed": 2}


    def alerted() -> bool:  # logged right after the outcomes are recorded
        alerts = [line for line in worker.log()[log_before:].splitlines() if "operator action needed" in line]
        return any("TokenMismatch" in a and "DeviceTokenNotForTopic" in a for a in alerts) and any(
            "TokenMismatch" in a and "SenderIdMismatchError" in a for a in alerts)

    wait_until(alerted, what="an operator alert for each held verdict")

    report = sweep(store, Settings.current())
    assert report.removed_dead == {} and device_ids(store) == ids  # held: nothing removed
    again = settled(notify.delay(APP, ["ios", "and"], title="again").id)
    assert again.counts == {"skipped": 2}  # but suppressed: nothing sent to them
    assert len(apns.records) == 1 and len(fcm.records) == 1
    rows = {(r["app"], r["platform"]): r for r in json.loads(CliRunner().invoke(cli, ["tokens", "--json"]).output)}
    assert rows[(APP, "apns")]["held_verdicts"] == 1 and rows[(APP, "fcm")]["held_verdicts"] == 1

    confirmed = CliRunner().invoke(cli, ["sweep", "--confirm", APP])
    assert confirmed.exit_code == 0, confirmed.output
    assert device_ids(store) == set()  # confirmed: the sweep removed them


def _declare_dead(store: Store, device_ids: list[int]) -> None:
    """Verdicts as the channels record them (the provider said these tokens are gone)."""
    with store.pool.connection() as conn:
        conn.execute("""INSERT INTO stale_tokens (device_id, app, platform, token, reason)
                        SELECT id, app, platform, token, '410 Unregistered' FROM devices WHERE id = ANY(%s)""",
                     (device_ids,))


def test_a_slow_drip_of_verdicts_adds_up_and_is_held(store) -> None:
    """12 of 40 tokens declared dead per sweep stays under the 20-verdict threshold each time;
    over the guard's window the removals already made count, and the second round is held."""
    ids = [register_device(APP, f"d{i}", "apns", os.urandom(32).hex()) for i in range(40)]
    _declare_dead(store, ids[:12])
    first = sweep(store, Settings.current())
    assert first.removed_dead == {APP: 12} and first.held == {}
    _declare_dead(store, ids[12:24])
    second = sweep(store, Settings.current())
    assert second.removed_dead == {} and second.held == {f"{APP}/apns": 12}
    assert set(ids[12:]) <= device_ids(store)


def test_the_guard_counts_per_platform(store) -> None:
    """An APNs environment mix-up declares every iOS token dead; the app's many Android
    devices must not dilute it below the threshold. Released, the iOS devices come back intact."""
    ios = [register_device(APP, f"ios{i}", "apns", os.urandom(32).hex()) for i in range(30)]
    for i in range(400):
        register_device(APP, f"and{i}", "fcm", fcm_token())
    _declare_dead(store, ios)  # 30 of 430 devices (7 %), but 30 of 30 iOS ones
    report = sweep(store, Settings.current())
    assert report.held == {f"{APP}/apns": 30} and report.removed_dead == {}
    out = CliRunner().invoke(cli, ["sweep", "--release", APP, "--json"])
    assert out.exit_code == 0, out.output
    assert set(ios) <= device_ids(store)
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM stale_tokens").fetchone()[0] == 0


def test_what_the_sweep_removed_can_be_restored(webpush, worker, settled, store) -> None:
    from notifier import subscribe_topic

    subs = [webpush.subscribe() for _ in range(3)]
    ids = [register_device(APP, f"r{i}", "webpush", s) for i, s in enumerate(subs)]
    for s in subs:
        subscribe_topic(APP, "news", "webpush", s)
    before = CliRunner().invoke(cli, ["tokens", "--json"])
    assert before.exit_code == 0
    _declare_dead(store, ids)  # a push service wrongly said they were gone
    assert sweep(store, replace(Settings.current(), guard_min_verdicts=10**9)).removed_dead == {APP: 3}
    assert device_ids(store) == set()
    out = CliRunner().invoke(cli, ["tokens", "--restore", APP, "--since", "1h"])
    assert out.exit_code == 0 and "restored 3 devices" in out.output, out.output
    assert device_ids(store) == set(ids)
    st = settled(notify.delay(APP, topic="news", title="back").id)  # their topics came back too
    assert st.counts == {"delivered": 3} and [webpush.delivered_count(s) for s in subs] == [1, 1, 1]


def _a_day_passes(store: Store) -> None:
    """The held verdicts' day is over (the clock moved, as far as the verdicts know)."""
    with store.pool.connection() as conn:
        conn.execute("UPDATE stale_tokens SET learned_at = learned_at - interval '25 hours',"
                     " first_learned_at = first_learned_at - interval '25 hours'")
        conn.execute("UPDATE devices SET last_delivered_at = last_delivered_at - interval '25 hours',"
                     " registered_at = registered_at - interval '25 hours'")


def test_a_held_verdict_repeated_while_our_credentials_work_becomes_dead(apns, worker, settled, store) -> None:
    """DeviceTokenNotForTopic for one token while the app's other iOS devices are reached:
    our bundle id is right, the token is another app's. Held for a day, tried again, the
    same answer: the sweep removes it."""
    foreign, fine = os.urandom(32).hex(), os.urandom(32).hex()
    apns.script(foreign, "not_for_topic")
    foreign_id = register_device(APP, "foreign", "apns", foreign)
    register_device(APP, "fine", "apns", fine)
    assert settled(notify.delay(APP, ["foreign", "fine"], title="1").id).counts == {"delivered": 1, "failed": 1}
    assert sweep(store, Settings.current()).promoted == 0  # once is not enough
    _a_day_passes(store)
    second = settled(notify.delay(APP, ["foreign", "fine"], title="2").id)  # the day is over: one probe
    assert second.counts == {"delivered": 1, "failed": 1} and apns.delivered_count(fine) == 2
    assert sum(1 for r in apns.records if r.token == foreign) == 2
    report = sweep(store, Settings.current())
    assert report.promoted == 1 and report.removed_dead == {APP: 1}
    assert foreign_id not in device_ids(store)


def test_a_held_verdict_is_never_promoted_when_nothing_of_ours_gets_through(apns, worker, settled, store) -> None:
    """Every token answered DeviceTokenNotForTopic: our bundle id is the likelier culprit.
    The tokens stay, however often the verdict repeats."""
    tokens = [os.urandom(32).hex() for _ in range(3)]
    for i, t in enumerate(tokens):
        apns.script(t, "not_for_topic")
        register_device(APP, f"h{i}", "apns", t)
    for round_ in range(2):
        st = settled(notify.delay(APP, [f"h{i}" for i in range(3)], title=str(round_)).id)
        assert st.counts == {"failed": 3}
        _a_day_passes(store)
    report = sweep(store, Settings.current())
    assert report.promoted == 0 and report.removed_dead == {} and len(device_ids(store)) == 3


def test_a_held_verdict_whose_probe_is_delivered_is_void(apns, worker, settled, store) -> None:
    t = os.urandom(32).hex()
    apns.script(t, "not_for_topic", times=1)  # the operator fixed the bundle id meanwhile
    register_device(APP, "fixed", "apns", t)
    settled(notify.delay(APP, "fixed", title="1").id)
    _a_day_passes(store)
    assert settled(notify.delay(APP, "fixed", title="2").id).counts == {"delivered": 1}
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM stale_tokens").fetchone()[0] == 0
