"""The token guards read line by line, as a reviewer would: each way around them, closed.

Built from the store's own calls and tables (a verdict is a row as the channels record
it; "a day passes" moves the rows' times back), then swept or claimed for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from notifier import register_device, unregister_device
from notifier.api import prepare_notify
from notifier.cli import main as cli
from notifier.config import Settings
from notifier.feedback import Result
from notifier.migrate import available, migrate
from notifier.model import Device, Platform
from notifier.outcomes import TokenMismatch
from notifier.store import Store
from notifier.store.deliveries import _write_verdicts
from notifier.sweep import sweep
from tests.integration.conftest import ENV
from tests.integration.test_hygiene import _declare_dead, device_ids, fcm_token

APP = "testapp"


def _sql(store: Store, query: str, *args: object) -> list[tuple[Any, ...]]:
    with store.pool.connection() as conn:
        cur = conn.execute(query, args)
        return cur.fetchall() if cur.description else []


def _held(store: Store, device_id: int, *, first_hours_ago: float, repeats: int = 2) -> None:
    """A held verdict (DeviceTokenNotForTopic) first learned ``first_hours_ago``, last now."""
    _sql(store, """INSERT INTO stale_tokens (device_id, app, platform, token, reason, kind, repeats,
                                             first_learned_at, learned_at)
                   SELECT id, app, platform, token, '400 DeviceTokenNotForTopic', 'hold', %s,
                          now() - make_interval(hours => %s), now()
                     FROM devices WHERE id = %s""", repeats, first_hours_ago, device_id)


def test_a_held_verdict_needs_a_peer_delivered_near_its_latest_failure(store) -> None:
    """The bundle id was fixed an hour after the first failure (the other iPhone was
    reached then), broken again a day later: the probe's failure proves nothing about the
    token, so it is not promoted. A peer reached minutes from the failure is evidence."""
    foreign = register_device(APP, "foreign", "apns", os.urandom(32).hex())
    peer = register_device(APP, "peer", "apns", os.urandom(32).hex())
    _held(store, foreign, first_hours_ago=25)
    _sql(store, "UPDATE devices SET last_delivered_at = now() - interval '24 hours' WHERE id = %s", peer)
    assert sweep(store, Settings.current()).promoted == 0
    assert _sql(store, "SELECT kind FROM stale_tokens WHERE device_id = %s", foreign) == [("hold",)]

    _sql(store, "UPDATE devices SET last_delivered_at = now() - interval '5 minutes' WHERE id = %s", peer)
    report = sweep(store, Settings.current())
    assert report.promoted == 1 and report.removed_dead == {APP: 1} and foreign not in device_ids(store)


def test_old_verdicts_still_count_towards_the_guard(store) -> None:
    """30 of 40 tokens declared dead two days ago while the sweep was not running (its beat
    was down): the verdicts are older than the guard's window and must count all the same."""
    ids = [register_device(APP, f"o{i}", "apns", os.urandom(32).hex()) for i in range(40)]
    _declare_dead(store, ids[:30])
    _sql(store, "UPDATE devices SET registered_at = now() - interval '3 days'")
    _sql(store, "UPDATE stale_tokens SET learned_at = now() - interval '2 days'")
    report = sweep(store, Settings.current())
    assert report.held == {f"{APP}/apns": 30} and report.removed_dead == {}
    assert set(ids) == device_ids(store)


def test_a_hold_from_before_the_per_platform_guard_survives_the_upgrade(store) -> None:
    """A database held (one hold per app, migration 0003) is upgraded: the hold becomes one
    per platform with waiting verdicts, and the sweep still removes nothing."""
    server = psycopg.conninfo.conninfo_to_dict(ENV["DATABASE_URL"])
    admin_url = psycopg.conninfo.make_conninfo(ENV["DATABASE_URL"], dbname="postgres")
    name = f"{server['dbname']}_upgrade"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(ENV["DATABASE_URL"], dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # the schema as it was at 0006
            conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            for version, filename, sql in available():
                if version <= 6:
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, filename))
            ids = [conn.execute("INSERT INTO devices (app, user_id, platform, token) VALUES (%s, %s, %s, %s)"
                                " RETURNING id", (APP, f"u{i}", "apns", os.urandom(32).hex())).fetchone()[0]
                   for i in range(30)]
            conn.execute("INSERT INTO stale_tokens (device_id, app, platform, token, reason)"
                         " SELECT id, app, platform, token, '410' FROM devices")
            conn.execute("INSERT INTO sweep_holds (app, verdicts, devices) VALUES (%s, 30, 30)", (APP,))
        migrate(url)
        upgraded = Store(url)
        try:
            assert _sql(upgraded, "SELECT app, platform FROM sweep_holds") == [(APP, "apns")]
            report = sweep(upgraded, Settings.current())
            assert report.removed_dead == {} and report.held == {f"{APP}/apns": 30}
            assert len(device_ids(upgraded)) == len(ids)
        finally:
            upgraded.close()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_restore_brings_back_neither_an_unregistered_device_nor_another_users_token(store) -> None:
    tokens = [os.urandom(32).hex() for _ in range(3)]
    ids = [register_device(APP, f"r{i}", "apns", t) for i, t in enumerate(tokens)]
    _declare_dead(store, ids)
    assert sweep(store, replace(Settings.current(), guard_min_verdicts=10**9)).removed_dead == {APP: 3}
    unregister_device(APP, "apns", tokens[0])  # its user signed out: gone for good
    moved = register_device(APP, "someone-else", "apns", tokens[1])  # the phone changed hands
    out = CliRunner().invoke(cli, ["tokens", "--restore", APP, "--since", "1h"])
    assert out.exit_code == 0 and "restored 1 devices" in out.output, out.output
    owners = dict(_sql(store, "SELECT token, user_id FROM devices"))
    assert owners == {tokens[1]: "someone-else", tokens[2]: "r2"}
    assert _sql(store, "SELECT id FROM devices WHERE token = %s", tokens[1]) == [(moved,)]


def test_confirm_and_release_can_name_one_platform(store) -> None:
    ios = [register_device(APP, f"i{i}", "apns", os.urandom(32).hex()) for i in range(25)]
    android = [register_device(APP, f"a{i}", "fcm", fcm_token()) for i in range(25)]
    _declare_dead(store, ios + android)
    assert set(sweep(store, Settings.current()).held) == {f"{APP}/apns", f"{APP}/fcm"}
    out = CliRunner().invoke(cli, ["sweep", "--release", APP, "--platform", "apns"])
    assert out.exit_code == 0 and "released 25 verdicts" in out.output, out.output
    assert set(ios + android) == device_ids(store)  # the FCM hold still stands
    assert _sql(store, "SELECT platform FROM sweep_holds") == [("fcm",)]
    out = CliRunner().invoke(cli, ["sweep", "--confirm", APP, "--platform", "fcm"])
    assert out.exit_code == 0, out.output
    assert device_ids(store) == set(ios)


def test_a_re_registered_token_starts_its_held_verdict_afresh(store) -> None:
    """Held once, re-registered (the app fixed its bundle id and the device checked in):
    the next mismatch is a first, not a repeat that could promote it."""
    token = os.urandom(32).hex()
    device_id = register_device(APP, "u", "apns", token)
    _held(store, device_id, first_hours_ago=30, repeats=1)
    _sql(store, "UPDATE stale_tokens SET learned_at = now() - interval '2 hours' WHERE device_id = %s", device_id)
    register_device(APP, "u", "apns", token)
    device = Device(device_id, APP, Platform.APNS, token)
    with store.pool.connection() as conn, conn.transaction():
        _write_verdicts(conn, [Result(device, TokenMismatch(APP, "400 DeviceTokenNotForTopic", 400), "failed")])
    repeats, fresh = _sql(store, "SELECT repeats, first_learned_at > now() - interval '1 minute' FROM stale_tokens"
                                 " WHERE device_id = %s", device_id)[0]
    assert (repeats, fresh) == (1, True)


@pytest.fixture
def resumer_held(store: Store) -> Iterator[None]:
    """The session's beat keeps dispatching resume_owed, whose take_due and worker claims
    would race the rows these tests play by hand: hold the lock every resume run takes
    (waiting out one already running) until the test ends."""
    from workers.tasks import RESUME_LOCK

    with store.pool.connection() as conn:
        conn.autocommit = True
        conn.execute("SET lock_timeout = '30s'")  # a resume run stuck for longer fails the test, not the suite
        conn.execute("SELECT pg_advisory_lock(%s)", (RESUME_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (RESUME_LOCK,))
            conn.execute("RESET lock_timeout")
            conn.autocommit = False


def _owed(store: Store, users: list[str]) -> str:
    request = prepare_notify(APP, users, title="late", ttl=86400)
    store.create_notification(request, grace=3600)
    store.claim_fanout(request.id, "00000000-0000-4000-8000-000000000009", timedelta(hours=1))
    store.add_users(request.id, APP, request.audience.ids, 3600)
    return request.id


def test_the_retry_window_opens_at_a_devices_first_attempt(store, resumer_held) -> None:
    """A device first reached two hours into a backlog still has its whole hour of retries."""
    device_id = register_device(APP, "late", "apns", os.urandom(32).hex())
    nid = _owed(store, ["late"])
    _sql(store, "UPDATE notifications SET created_at = now() - interval '2 hours' WHERE id = %s", nid)
    first = store.claim(nid, Platform.APNS, 0, 10**9, limit=10, max_attempts=50, retry_window=3600)
    assert first is not None and first.window_closed == frozenset()
    _sql(store, "UPDATE deliveries SET status = 'retrying', due_at = now(),"
                " first_tried_at = now() - interval '61 minutes' WHERE device_id = %s", device_id)
    later = store.claim(nid, Platform.APNS, 0, 10**9, limit=10, max_attempts=50, retry_window=3600)
    assert later is not None and later.window_closed == {device_id}


def test_a_device_whose_batches_keep_dying_fails_after_a_few(store, resumer_held) -> None:
    """A poison device: each batch holding it dies, its claim lapses, the resumer takes it
    back. After MAX_LAPSES lapses it fails instead of taking batch after batch down."""
    from notifier.store import MAX_LAPSES

    device_id = register_device(APP, "poison", "apns", os.urandom(32).hex())
    nid = _owed(store, ["poison"])
    for _ in range(MAX_LAPSES):
        claim = store.claim(nid, Platform.APNS, 0, 10**9, limit=10, max_attempts=50, lease=timedelta(0))
        assert claim is not None and [d.id for d in claim.devices] == [device_id]
        _sql(store, "UPDATE deliveries SET due_at = now() - interval '1 second' WHERE device_id = %s", device_id)
        store.take_due(limit=10, batch_size=10, grace=0)  # the resumer finds the lapsed claim
    assert store.claim(nid, Platform.APNS, 0, 10**9, limit=10, max_attempts=50).devices == []
    status, reason = _sql(store, "SELECT status, reason FROM deliveries WHERE device_id = %s", device_id)[0]
    assert status == "failed" and f"{MAX_LAPSES} of them in batches that never finished" in reason
