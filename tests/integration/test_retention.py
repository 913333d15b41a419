"""Tables that stay small: outcomes past retention go, in small statements; the periodic
queries are served by indexes, so their cost does not grow with the tables."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

from click.testing import CliRunner

from notifier import register_device
from notifier.api import prepare_notify
from notifier.cli import main as cli
from notifier.config import Settings
from notifier.retention import DELIVERY_CHUNK, OLD_NOTIFICATIONS, OLD_REMOVALS, purge
from notifier.store import Store

APP = "testapp"


def _notification(store: Store, users: list[str], *, age_days: float) -> str:
    """A notification fanned out to ``users`` (its delivery rows written), created
    ``age_days`` ago with a one-day TTL."""
    request = prepare_notify(APP, users, title="old", ttl=86_400)
    store.create_notification(request, grace=3600)
    store.claim_fanout(request.id, "00000000-0000-4000-8000-00000000000a", timedelta(hours=1))
    store.add_users(request.id, APP, request.audience.ids, 3600)
    with store.pool.connection() as conn:
        conn.execute("UPDATE notifications SET created_at = now() - make_interval(days => %s),"
                     " expires_at = now() - make_interval(days => %s) + interval '1 day' WHERE id = %s",
                     (age_days, age_days, request.id))
    return request.id


def _count(store: Store, query: str, *args: object) -> int:
    with store.pool.connection() as conn:
        row = conn.execute(query, args).fetchone()
    assert row is not None
    return int(row[0])


def test_outcomes_past_retention_are_purged_in_small_statements(store) -> None:
    users = [f"u{i}" for i in range(1200)]
    with store.pool.connection() as conn:  # 1,200 devices at once (register_device is one a call)
        conn.execute("INSERT INTO devices (app, user_id, platform, token)"
                     " SELECT %s, 'u' || i, 'apns', md5(i::text) || md5((i + 1)::text) FROM generate_series(0, 1199) i",
                     (APP,))
    old = [_notification(store, users, age_days=31) for _ in range(2)]
    young = _notification(store, users, age_days=29)  # inside the 30 days: kept
    assert _count(store, "SELECT count(*) FROM deliveries") == 3600

    report = purge(store, Settings.current(), chunk=500)
    assert (report.notifications, report.deliveries, report.finished) == (2, 2400, True)
    assert report.largest_statement == 500  # never more rows in one statement than a chunk
    assert _count(store, "SELECT count(*) FROM notifications WHERE id = ANY(%s::uuid[])", old) == 0
    assert _count(store, "SELECT count(*) FROM deliveries WHERE notification_id = %s", young) == 1200

    again = purge(store, Settings.current(), chunk=500)  # nothing left to do
    assert (again.notifications, again.deliveries) == (0, 0)


def test_a_purge_out_of_budget_stops_and_the_next_carries_on(store) -> None:
    register_device(APP, "u", "apns", os.urandom(32).hex())
    nid = _notification(store, ["u"], age_days=40)
    stopped = purge(store, Settings.current(), budget=0.0)
    assert not stopped.finished and stopped.notifications == 0
    out = CliRunner().invoke(cli, ["purge", "--json"])
    assert out.exit_code == 0 and '"notifications": 1' in out.output, out.output
    assert _count(store, "SELECT count(*) FROM notifications WHERE id = %s", nid) == 0


def test_removal_records_go_after_retention_and_restore_both(store) -> None:
    with store.pool.connection() as conn:
        for device_id, days in ((1, 45), (2, 10)):
            conn.execute("INSERT INTO removed_devices (device_id, app, platform, user_id, token_tail, cause,"
                         " registered_at, removed_at) VALUES (%s, %s, 'apns', 'u', 'abcdef', 'dead', now(),"
                         " now() - make_interval(days => %s))", (device_id, APP, days))
    assert purge(store, Settings.current()).removals == 1
    archive = replace(Settings.current(), sweep_mode="archive")  # archive mode keeps the log for good
    with store.pool.connection() as conn:
        conn.execute("UPDATE removed_devices SET removed_at = now() - interval '45 days'")
    assert purge(store, archive).removals == 0
    assert _count(store, "SELECT count(*) FROM removed_devices") == 1


def test_the_periodic_queries_are_served_by_indexes(store) -> None:
    """What the purge and the sweep read on a schedule must not scan whole tables."""
    queries = {
        "notifications_created": OLD_NOTIFICATIONS % (30, 100),
        "deliveries_pkey": DELIVERY_CHUNK % ("'00000000-0000-4000-8000-000000000000'", 5000),
        "removed_devices_removed_at": OLD_REMOVALS % (30, 5000),
        # the sweep's inactivity pass: one slice of devices by id
        "devices_pkey": "SELECT max(id) FROM (SELECT id FROM devices WHERE id > 0 ORDER BY id LIMIT 100000) s",
    }
    with store.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # an empty table would be scanned anyway
        for index, query in queries.items():
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query).fetchall())
            assert f"using {index}" in plan or f"on {index}" in plan, plan


def test_the_inactivity_pass_looks_at_one_slice_per_sweep_and_wraps_around(store, monkeypatch) -> None:
    import notifier.sweep as hygiene

    monkeypatch.setattr(hygiene, "INACTIVE_SLICE", 2)
    ids = [register_device(APP, f"i{i}", "apns", os.urandom(32).hex()) for i in range(5)]
    with store.pool.connection() as conn:
        conn.execute("UPDATE devices SET registered_at = now() - interval '300 days'")
    left = []
    for _ in range(3):
        hygiene.sweep(store, Settings.current())
        left.append(_count(store, "SELECT count(*) FROM devices"))
    assert left == [3, 1, 0]
    late = register_device(APP, "late", "apns", os.urandom(32).hex())  # after the cursor's end
    with store.pool.connection() as conn:
        conn.execute("UPDATE devices SET registered_at = now() - interval '300 days'")
    assert hygiene.sweep(store, Settings.current()).expired == {APP: 1} and late > max(ids)
