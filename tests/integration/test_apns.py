"""APNs through the whole pipeline: what reached the simulator, header by header, and how
each answer class lands in the delivery and stale-token tables.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from notifier import register_device
from tests.integration.conftest import APNS_TOPIC
from workers import notify

APP = "testapp"


def token() -> str:
    return os.urandom(32).hex()


def test_every_apns_header_and_field_reaches_apple(apns, worker, settled) -> None:
    tokens = [token() for _ in range(3)]
    for i, t in enumerate(tokens):
        register_device(APP, f"u{i}", "apns", t)
    before = int(time.time())
    st = settled(notify.delay(
        APP, ["u0", "u1", "u2"], title="Hi", body="There", data={"order": 7}, badge=2, sound="ping.aiff",
        ttl=600, collapse_key="orders-7", priority="high", thread_id="orders", mutable_content=True,
        title_loc_key="T_KEY", title_loc_args=["a"], body_loc_key="B_KEY", body_loc_args=["b", "c"],
    ).id)
    assert st.counts == {"delivered": 3}
    assert apns.deliveries_by_token() == {t: 1 for t in tokens}
    for rec in apns.delivered():
        h = rec.headers
        assert h["apns-topic"] == APNS_TOPIC and h["apns-push-type"] == "alert" and h["apns-priority"] == "10"
        assert h["apns-collapse-id"] == "orders-7"
        # the TTL counts from the call: what remained of 600 s when the worker sent it
        assert before + 599 <= int(h["apns-expiration"]) <= int(time.time()) + 600
        assert rec.jwt_kid and rec.jwt_iss
        assert rec.payload == {
            "order": 7,
            "aps": {"alert": {"title": "Hi", "body": "There", "title-loc-key": "T_KEY", "title-loc-args": ["a"],
                              "loc-key": "B_KEY", "loc-args": ["b", "c"]},
                    "badge": 2, "sound": "ping.aiff", "mutable-content": 1, "thread-id": "orders"},
        }


def test_silent_push_is_background_priority_5(apns, worker, settled) -> None:
    t = token()
    register_device(APP, "u", "apns", t)
    settled(notify.delay(APP, "u", silent=True, data={"sync": "inbox"}, priority="high").id)
    (rec,) = apns.delivered()
    assert (rec.headers["apns-push-type"], rec.headers["apns-priority"]) == ("background", "5")
    assert rec.payload == {"sync": "inbox", "aps": {"content-available": 1}}


def test_answers_are_classified(apns, worker, settled, store) -> None:
    cases = {"live": "delivered", "dead": "dead", "bad": "dead", "not_for_topic": "failed",
             "badcollapse": "failed", "toolarge": "failed"}
    tokens = {name: token() for name in cases}
    gone_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    apns.script(tokens["dead"], "dead", timestamp_ms=int(gone_at.timestamp() * 1000))
    apns.script(tokens["bad"], "bad")
    apns.script(tokens["not_for_topic"], "not_for_topic")
    apns.script(tokens["badcollapse"], "bad", reason="BadCollapseId")
    apns.script(tokens["toolarge"], "failing", status=413, reason="PayloadTooLarge")
    ids = {name: register_device(APP, name, "apns", t) for name, t in tokens.items()}

    st = settled(notify.delay(APP, list(cases), title="t").id)
    by_device = {f.device_id: f for f in st.failures}
    for name, expected in cases.items():
        status = by_device[ids[name]].status if ids[name] in by_device else "delivered"
        assert status == expected, name
    with store._pool.connection() as conn:
        stale = dict(conn.execute("SELECT device_id, provider_since FROM stale_tokens").fetchall())
        kinds = dict(conn.execute("SELECT device_id, kind FROM stale_tokens").fetchall())
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
    assert set(stale) == {ids["dead"], ids["bad"], ids["not_for_topic"]}
    assert stale[ids["dead"]] == gone_at  # Apple's timestamp kept
    # DeviceTokenNotForTopic can be our own wrong bundle id: held, never removed on its own
    assert kinds == {ids["dead"]: "dead", ids["bad"]: "dead", ids["not_for_topic"]: "hold"}
    assert devices == len(cases)  # nothing removed before the sweep


def test_credential_failure_keeps_tokens(apns, worker, settled, store) -> None:
    t = token()
    register_device("wrongkey", "u", "apns", t)
    st = settled(notify.delay("wrongkey", "u", title="t").id)
    (failure,) = st.failures
    assert (failure.status, failure.provider_status) == ("failed", 403)
    assert "InvalidProviderToken" in failure.reason
    assert apns.records[0].status == 403
    with store._pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM stale_tokens").fetchone()[0] == 0


def test_throttled_and_failing_are_retried(apns, worker, settled) -> None:
    throttled, failing = token(), token()
    apns.script(throttled, "throttled", times=1)
    apns.script(failing, "failing", status=503, times=2)
    register_device(APP, "a", "apns", throttled)
    register_device(APP, "b", "apns", failing)
    st = settled(notify.delay(APP, ["a", "b"], title="t").id, timeout=60)
    assert st.counts == {"delivered": 2}
    assert apns.deliveries_by_token() == {throttled: 1, failing: 1}
    assert [r.status for r in apns.records if r.token == failing] == [503, 503, 200]


def test_mixed_audience_reaches_both_channels(apns, webpush, worker, settled) -> None:
    t = token()
    sub = webpush.subscribe()
    register_device(APP, "both", "apns", t)
    register_device(APP, "both", "webpush", sub)
    st = settled(notify.delay(APP, "both", title="t").id)
    assert st.counts == {"delivered": 2}
    assert apns.deliveries_by_token() == {t: 1} and webpush.delivered_count(sub) == 1
