"""Bulk registration: ``register_devices`` and ``notifier import``, with register_device's
checks and move rule; bad rows reported by line and skipped, good rows kept and usable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from notifier import InvalidNotification, register_device, register_devices
from notifier.cli import main as cli
from tests.integration.conftest import ENV

APP = "testapp"
README = Path(__file__).resolve().parents[2] / "README.md"


def _devices(store) -> dict[tuple[str, str], str]:
    """(platform, token) -> user, every device of the app."""
    with store._pool.connection() as conn:
        return {(p, t): u for p, t, u in conn.execute(
            "SELECT platform, token, user_id FROM devices WHERE app = %s", (APP,))}


def test_csv_keeps_good_rows_reports_bad_lines_and_the_good_rows_deliver(store, webpush, apns, fcm, worker,
                                                                          settled, tmp_path) -> None:
    from workers import notify

    sub, sub2 = webpush.subscribe(), webpush.subscribe()
    ios, android = os.urandom(32).hex(), "imp-" + os.urandom(24).hex()
    lines = [
        "user,platform,token,p256dh,auth",                                                # 1
        f"u-ios,apns,{ios},,",                                                            # 2
        "u-bad,apns,not-hex,,",                                                           # 3
        f"u-android,fcm,{android},,",                                                     # 4
        f"u-web,webpush,{sub['endpoint']},{sub['keys']['p256dh']},{sub['keys']['auth']}",  # 5
        "u-odd,pager,abc,,",                                                              # 6
        f",apns,{os.urandom(32).hex()},,",                                                # 7: no user
        f"u-private,webpush,https://10.1.2.3/push/x,{sub['keys']['p256dh']},{sub['keys']['auth']}",  # 8
        f"u-extra,apns,{os.urandom(32).hex()},,,surplus",                                 # 9
    ]
    web2 = json.dumps(sub2).replace('"', '""')
    lines.append(f'u-web2,webpush,"{web2}",,')                                            # 10: subscription JSON
    (tmp_path / "devices.csv").write_text("\n".join(lines) + "\n")
    out = CliRunner().invoke(cli, ["import", APP, str(tmp_path / "devices.csv")])
    assert out.exit_code == 1, out.output
    bad = {int(m[1]): m[2] for m in re.finditer(r"devices\.csv:(\d+): (.*)", out.output)}
    assert set(bad) == {3, 6, 7, 8, 9}, out.output
    assert "hex" in bad[3] and "platform" in bad[6] and "user" in bad[7] and "not a known push service" in bad[8]
    assert "10 rows" not in out.output and "9 rows: 4 new devices, 0 updated, 5 bad rows skipped" in out.output
    assert _devices(store) == {("apns", ios): "u-ios", ("fcm", android): "u-android",
                               ("webpush", sub["endpoint"]): "u-web", ("webpush", sub2["endpoint"]): "u-web2"}
    # what was stored is whole: each device is reached (the keys decrypt, the tokens are right)
    nid = notify.delay(APP, ["u-ios", "u-android", "u-web", "u-web2"], title="imported").id
    assert settled(nid).counts == {"delivered": 4}
    assert webpush.delivered_count(sub) == webpush.delivered_count(sub2) == 1
    assert apns.delivered_count(ios) == 1 and fcm.delivered_count(android) == 1


def test_a_known_token_moves_to_the_new_user_and_the_last_row_wins(store) -> None:
    moved, twice = os.urandom(32).hex(), os.urandom(32).hex()
    register_device(APP, "old-owner", "apns", moved)
    report = register_devices(APP, [("new-owner", "apns", moved.upper()),  # the canonical form is the same token
                                    ("first", "apns", twice), ("second", "apns", twice)])
    assert (report.rows, report.inserted, report.updated, report.bad) == (3, 1, 1, 0)
    assert _devices(store) == {("apns", moved): "new-owner", ("apns", twice): "second"}
    # the same rows one by one through register_device end the same way
    register_device(APP, "first", "apns", twice)
    register_device(APP, "second", "apns", twice)
    assert _devices(store) == {("apns", moved): "new-owner", ("apns", twice): "second"}


def test_chunks_checked_in_a_second_process_keep_row_order(store, webpush) -> None:
    """Past one chunk, a checking process works a chunk ahead of the load: the result is the
    same as one chunk, the last row for a token still wins across chunks, bad lines are kept."""
    sub = webpush.subscribe()
    twice, tokens = os.urandom(32).hex(), [os.urandom(32).hex() for _ in range(7)]
    rows: list[object] = [("first", "apns", twice)]
    rows += [(f"u{i}", "apns", t) for i, t in enumerate(tokens)]
    rows += [("u-bad", "apns", "not-hex"), ("u-web", "webpush", sub), "no row", ("last", "apns", twice)]
    report = register_devices(APP, rows, chunk=3)  # four chunks: checked in the second process
    assert (report.rows, report.inserted, report.updated, report.bad) == (12, 9, 1, 2)
    assert [(b.line, "hex" in b.error) for b in report.bad_rows] == [(9, True), (11, False)]
    assert _devices(store) == {("apns", twice): "last", ("webpush", sub["endpoint"]): "u-web",
                               **{("apns", t): f"u{i}" for i, t in enumerate(tokens)}}


def test_bad_app_or_platform_without_credentials_stores_nothing(store) -> None:
    with pytest.raises(InvalidNotification, match="not in"):
        register_devices("no-such-app", [("u", "apns", os.urandom(32).hex())])
    report = register_devices("wrongkey", [("u", "fcm", "imp-" + os.urandom(24).hex()),
                                           ("v", "apns", os.urandom(32).hex())])
    assert report.bad == 1 and "no fcm credentials" in report.bad_rows[0].error and report.bad_rows[0].line == 1
    with store._pool.connection() as conn:
        assert conn.execute("SELECT app, user_id FROM devices").fetchall() == [("wrongkey", "v")]


def test_json_lines_with_a_broken_line(store, webpush, tmp_path) -> None:
    sub = webpush.subscribe()
    ios = os.urandom(32).hex()
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"user": "a", "platform": "apns", "token": ios}) + "\n"
        + "{broken\n\n"
        + json.dumps({"user": "b", "platform": "webpush", "token": sub}) + "\n"
        + json.dumps(["not", "an", "object"]) + "\n")
    out = CliRunner().invoke(cli, ["import", APP, str(tmp_path / "d.jsonl"), "--json"])
    assert out.exit_code == 1, out.output
    report = json.loads(out.output)
    assert (report["rows"], report["inserted"], report["bad"]) == (4, 2, 2)
    assert [b["line"] for b in report["bad_rows"]] == [2, 5]
    assert _devices(store) == {("apns", ios): "a", ("webpush", sub["endpoint"]): "b"}


def test_an_unreadable_file_or_header_is_one_line(tmp_path) -> None:
    out = CliRunner().invoke(cli, ["import", APP, str(tmp_path / "missing.csv")])
    assert out.exit_code == 1 and "cannot read" in out.output and len(out.output.strip().splitlines()) == 1
    (tmp_path / "h.csv").write_text("name,token\nx,y\n")
    out = CliRunner().invoke(cli, ["import", APP, str(tmp_path / "h.csv")])
    assert out.exit_code == 1 and "lacks platform, user" in out.output, out.output


def test_django_push_notifications_tables_export_as_the_readme_says(store, webpush, tmp_path) -> None:
    """The README's psql lines, run against tables shaped like django-push-notifications'."""
    sub = webpush.subscribe()
    ios, android, legacy = os.urandom(32).hex(), "dpn-" + os.urandom(24).hex(), "gcm-" + os.urandom(24).hex()
    with store._pool.connection() as conn:
        conn.execute("""
            CREATE TABLE push_notifications_apnsdevice (id serial PRIMARY KEY, name text, active boolean,
                registration_id varchar(200), user_id integer);
            CREATE TABLE push_notifications_gcmdevice (id serial PRIMARY KEY, name text, active boolean,
                registration_id text, cloud_message_type varchar(3), user_id integer);
            CREATE TABLE push_notifications_webpushdevice (id serial PRIMARY KEY, name text, active boolean,
                registration_id text, p256dh varchar(88), auth varchar(24), browser varchar(10), user_id integer)""")
        conn.execute("INSERT INTO push_notifications_apnsdevice (active, registration_id, user_id) VALUES"
                     " (true, %s, 7), (false, %s, 8)", (ios, os.urandom(32).hex()))
        conn.execute("INSERT INTO push_notifications_gcmdevice (active, registration_id, cloud_message_type, user_id)"
                     " VALUES (true, %s, 'FCM', NULL), (true, %s, 'GCM', 9)", (android, legacy))
        conn.execute("INSERT INTO push_notifications_webpushdevice (active, registration_id, p256dh, auth, browser,"
                     " user_id) VALUES (true, %s, %s, %s, 'FIREFOX', 7)",
                     (sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"]))
    try:
        block = README.read_text().split("<!-- dpn-export", 1)[1].split("```", 2)[1]
        commands = [line for line in block.splitlines() if line.startswith("\\copy")]
        assert len(commands) == 3
        psql = shutil.which("psql")
        assert psql, "psql (PostgreSQL's client) is needed to export django-push-notifications' tables"
        for command in commands:
            subprocess.run([psql, ENV["DATABASE_URL"], "-v", "ON_ERROR_STOP=1", "-c", command], cwd=tmp_path,
                           check=True, capture_output=True)
        for name in ("dpn-apns.csv", "dpn-fcm.csv", "dpn-webpush.csv"):
            out = CliRunner().invoke(cli, ["import", APP, str(tmp_path / name)])
            assert out.exit_code == 0, out.output
    finally:
        with store._pool.connection() as conn:
            conn.execute("DROP TABLE IF EXISTS push_notifications_apnsdevice, push_notifications_gcmdevice,"
                         " push_notifications_webpushdevice")
    assert _devices(store) == {("apns", ios): "7", ("fcm", android): "dpn-gcm-1", ("webpush", sub["endpoint"]): "7"}
