"""The spine end to end: register -> notify.delay -> Redis -> real worker -> Web Push
simulator -> outcomes in PostgreSQL. Assertions are on what the simulator decrypted and
on table rows.
"""

from __future__ import annotations

import json

import pytest
import redis
from click.testing import CliRunner

from notifier import InvalidNotification, register_device, unregister_device
from notifier.cli import main as cli
from notifier.migrate import migrate
from tests.integration.conftest import ENV, wait_until
from workers import notify
from workers.queues import ALL_QUEUES

APP = "testapp"


def test_live_subscriptions_get_the_notification_exactly_once(webpush, worker, settled, store) -> None:
    subs = {f"user{i}": webpush.subscribe() for i in range(3)}
    second = webpush.subscribe()
    for user, sub in subs.items():
        register_device(APP, user, "webpush", sub)
    register_device(APP, "user0", "webpush", second)  # one user, two browsers

    result = notify.delay(APP, list(subs), title="Hello", body="World", data={"order": 42},
                          ttl=120, collapse_key="orders", priority="normal")
    st = settled(result.id)

    assert st.counts == {"delivered": 4}
    got = webpush.deliveries_by_token()
    assert sorted(got.values()) == [1, 1, 1, 1]
    for push in webpush.delivered():
        assert json.loads(push.payload) == {"title": "Hello", "body": "World", "data": {"order": 42}}
        assert (push.urgency, push.topic) == ("normal", "orders")
        assert 100 <= push.ttl <= 120  # what remains of the caller's 120 s when the worker sent it
        assert push.vapid_claims["sub"] == "mailto:ops@example.com"


def test_dead_subscriptions_are_reported_and_suppressed(webpush, worker, settled, store) -> None:
    live, gone, missing = webpush.subscribe(), webpush.subscribe(), webpush.subscribe()
    webpush.script(gone, "gone")
    webpush.script(missing, "not_found")
    ids = {name: register_device(APP, name, "webpush", sub) for name, sub in
           (("live", live), ("gone", gone), ("missing", missing))}

    st = settled(notify.delay(APP, ["live", "gone", "missing"], title="t").id)
    assert st.counts == {"delivered": 1, "dead": 2}
    assert {f.provider_status for f in st.failures} == {404, 410}
    with store._pool.connection() as conn:
        stale = {r[0] for r in conn.execute("SELECT device_id FROM stale_tokens")}
    assert stale == {ids["gone"], ids["missing"]}

    # Suppressed from now on: a second notification sends nothing to them.
    before = len(webpush.records)
    st2 = settled(notify.delay(APP, ["live", "gone", "missing"], title="again").id)
    assert st2.counts == {"delivered": 1, "skipped": 2}
    assert len(webpush.records) == before + 1


def test_message_and_credential_faults_keep_the_token(webpush, worker, settled, store) -> None:
    big, wrong_key = webpush.subscribe(), webpush.subscribe()
    webpush.script(big, "too_large")
    webpush.script(wrong_key, "unauthorized")
    register_device(APP, "a", "webpush", big)
    register_device(APP, "b", "webpush", wrong_key)

    st = settled(notify.delay(APP, ["a", "b"], title="t").id)
    assert st.counts == {"failed": 2}
    assert {f.provider_status for f in st.failures} == {413, 403}
    with store._pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM stale_tokens").fetchone()[0] == 0


def test_throttled_then_delivered_after_retry_after(webpush, worker, settled) -> None:
    sub = webpush.subscribe()
    webpush.script(sub, "throttle", retry_after=1, times=1)
    register_device(APP, "u", "webpush", sub)

    st = settled(notify.delay(APP, "u", title="t").id)
    assert st.counts == {"delivered": 1}
    first, second = webpush.records
    assert (first.status, second.status) == (429, 201)
    assert second.received_at - first.received_at >= 1.0  # Retry-After honoured


def test_server_errors_are_retried_then_given_up(webpush, worker, settled) -> None:
    flaky, broken = webpush.subscribe(), webpush.subscribe()
    webpush.script(flaky, "error", status=503, times=2)
    webpush.script(broken, "error", status=500)
    register_device(APP, "flaky", "webpush", flaky)
    register_device(APP, "broken", "webpush", broken)

    st = settled(notify.delay(APP, ["flaky", "broken"], title="t").id, timeout=90)
    assert st.counts == {"delivered": 1, "failed": 1}
    assert webpush.delivered_count(flaky) == 1
    (failure,) = st.failures
    assert failure.attempts == int(ENV["NOTIFIER_MAX_ATTEMPTS"]) and "gave up" in failure.reason


def test_fan_out_in_pages_reaches_every_device_once(webpush, worker, settled, store) -> None:
    users = [f"bulk{i}" for i in range(130)]  # batch size 50: three pages
    for user in users:
        register_device(APP, user, "webpush", webpush.subscribe())
    st = settled(notify.delay(APP, users, title="bulk").id, timeout=60)
    assert st.counts == {"delivered": 130}
    counts = webpush.deliveries_by_token()
    assert len(counts) == 130 and set(counts.values()) == {1}


def test_idempotency_key_sends_once(webpush, worker, settled) -> None:
    sub = webpush.subscribe()
    register_device(APP, "u", "webpush", sub)
    first = notify.delay(APP, "u", title="once", idempotency_key="order-7")
    second = notify.delay(APP, "u", title="once", idempotency_key="order-7")
    assert first.id == second.id
    settled(first.id)
    # the second message is consumed too; both are done when the queue is empty
    r = redis.Redis.from_url(ENV["REDIS_URL"])
    wait_until(lambda: r.llen("notify") == 0 and r.llen("webpush") == 0, what="queues to drain")
    assert webpush.delivered_count(sub) == 1


def test_register_moves_a_token_and_unregister_removes_it(webpush, store) -> None:
    sub = webpush.subscribe()
    first = register_device(APP, "alice", "webpush", sub)
    again = register_device(APP, "bob", "webpush", json.dumps(sub))
    assert first == again
    with store._pool.connection() as conn:
        rows = conn.execute("SELECT user_id FROM devices").fetchall()
    assert rows == [("bob",)]
    assert unregister_device(APP, "webpush", sub) is True
    assert unregister_device(APP, "webpush", sub) is False


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((APP, []), {"title": "t"}, "empty"),
        ((APP, "u"), {}, "title or a body"),
        ((APP, "u"), {"title": "t", "data": {"x": {1, 2}}}, "JSON"),
        ((APP, "u"), {"title": "t", "data": {"x": "y" * 5000}}, "limit"),
        (("otherapp", "u"), {"title": "t"}, "not in"),
        ((APP, "u"), {"title": "t", "colour": "red"}, "unknown fields"),
        ((APP,), {"title": "t"}, "exactly one audience"),
        ((APP, "u"), {"title": "t", "topic": "news"}, "exactly one audience"),
        ((APP,), {"title": "t", "topic": "bad topic!"}, "topic name"),
        ((APP,), {"title": "t", "fcm_condition": "news"}, "condition"),
        ((APP, "u"), {"title": "t", "data": {"google.x": "1"}}, "reserved"),
    ],
)
def test_bad_notify_raises_and_enqueues_nothing(store, args, kwargs, message) -> None:
    r = redis.Redis.from_url(ENV["REDIS_URL"])
    before = {q: r.llen(q) for q in ALL_QUEUES}
    with pytest.raises(InvalidNotification, match=message):
        notify.delay(*args, **kwargs)
    assert {q: r.llen(q) for q in ALL_QUEUES} == before


def test_bad_register_stores_nothing(store) -> None:
    for platform, token in (("gcm", "x" * 40), ("webpush", {"endpoint": "https://x.example"}),
                            ("apns", "nothex"), ("webpush", "{")):
        with pytest.raises(InvalidNotification):
            register_device(APP, "u", platform, token)
    with store._pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 0


def test_status_command_and_migrate_twice(webpush, worker, settled) -> None:
    gone = webpush.subscribe()
    webpush.script(gone, "gone")
    register_device(APP, "u", "webpush", webpush.subscribe())
    register_device(APP, "g", "webpush", gone)
    nid = notify.delay(APP, ["u", "g"], title="t").id
    settled(nid)

    runner = CliRunner()
    out = runner.invoke(cli, ["status", nid, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["counts"] == {"delivered": 1, "dead": 1} and data["settled"] is True
    assert data["failures"][0]["token_tail"] == gone["endpoint"][-6:]
    human = runner.invoke(cli, ["status", nid])
    assert "dead=1" in human.output and gone["endpoint"] not in human.output
    assert runner.invoke(cli, ["status", "not-a-uuid"]).exit_code != 0
    assert migrate(ENV["DATABASE_URL"]) == []


def test_a_retry_past_the_ttl_is_expired_not_sent_late(webpush, worker, settled, store) -> None:
    sub = webpush.subscribe()
    webpush.script(sub, "error", status=503, times=1)
    register_device(APP, "late", "webpush", sub)
    nid = notify.delay(APP, "late", title="t", ttl=60).id
    webpush.wait_for(lambda recs: len(recs) == 1)
    with store.pool.connection() as conn:  # the TTL runs out while the retry waits
        conn.execute("UPDATE notifications SET expires_at = now() - interval '1 second' WHERE id = %s", (nid,))
    st = settled(nid)
    assert st.counts == {"expired": 1}
    assert len(webpush.records) == 1  # never sent late
