"""FCM through the whole pipeline, the FCM channel against the simulator, and topics on
every channel.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from notifier import register_device, subscribe_topic, unsubscribe_topic
from notifier.config import FcmApp
from notifier.fcm import FcmChannel
from notifier.checks import build_notification
from notifier.model import Device, Platform
from notifier.trust import trust_extra_ca
from simulators.tls import ca_path
from tests.integration.conftest import ENV, FCM_PROJECT, KEYS, wait_until
from workers import notify
from workers.tasks import fcm_topic_members

APP = "testapp"


def token() -> str:
    return "fcm-" + os.urandom(20).hex()


def delivered(fcm: Any) -> dict[str, int]:
    """Token -> number of 200s the simulator answered (more than 1 is a duplicate)."""
    return fcm.deliveries_by_token()


def test_fcm_devices_get_every_field_once(fcm, worker, settled) -> None:
    tokens = [token() for _ in range(3)]
    for i, t in enumerate(tokens):
        register_device(APP, f"u{i}", "fcm", t)
    st = settled(notify.delay(APP, ["u0", "u1", "u2"], title="Hi", body="There", data={"order": 7, "s": "x"},
                              ttl=600, collapse_key="orders", priority="normal", sound="ping",
                              android_channel_id="orders", badge=3).id)
    assert st.counts == {"delivered": 3}
    assert delivered(fcm) == {t: 1 for t in tokens}
    msg = fcm.delivered()[0].message
    assert msg["notification"] == {"title": "Hi", "body": "There"}
    assert msg["data"] == {"order": "7", "s": "x"}  # FCM data values are strings
    # the TTL counts from the call: what remained of 600 s when the worker sent it
    assert msg["android"]["priority"] == "normal" and msg["android"]["ttl"] in ("598s", "599s", "600s")
    assert msg["android"]["collapse_key"] == "orders"
    assert msg["android"]["notification"]["channel_id"] == "orders"
    assert msg["apns"]["headers"]["apns-priority"] == "5"
    assert msg["apns"]["payload"]["aps"]["badge"] == 3
    assert msg["webpush"]["headers"] == {"TTL": msg["android"]["ttl"][:-1], "Urgency": "normal", "Topic": "orders"}


def test_error_classes(fcm, worker, settled, store) -> None:
    cases = {"live": ("live", "delivered"), "gone": ("unregistered", "dead"), "bad": ("invalid_token", "dead"),
             "other": ("sender_mismatch", "failed"), "auth": ("third_party_auth", "failed")}
    tokens = {name: token() for name in cases}
    for name, (behaviour, _) in cases.items():
        if behaviour != "live":
            fcm.script(tokens[name], behaviour)
    ids = {name: register_device(APP, name, "fcm", t) for name, t in tokens.items()}
    st = settled(notify.delay(APP, list(cases), title="t").id)
    by_device = {f.device_id: f.status for f in st.failures}
    assert {n: by_device.get(ids[n], "delivered") for n in cases} == {n: e for n, (_, e) in cases.items()}
    with store._pool.connection() as conn:
        stale = dict(conn.execute("SELECT device_id, kind FROM stale_tokens").fetchall())
    # the credential fault keeps its token; SENDER_ID_MISMATCH (maybe our wrong project) holds it
    assert stale == {ids["gone"]: "dead", ids["bad"]: "dead", ids["other"]: "hold"}


def test_quota_exceeded_honours_retry_after(fcm, worker, settled) -> None:
    t = token()
    fcm.script(t, "quota", retry_after=2, times=1)
    register_device(APP, "u", "fcm", t)
    st = settled(notify.delay(APP, "u", title="t").id, timeout=60)
    assert st.counts == {"delivered": 1}
    first, second = [r for r in fcm.records if r.token == t]
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 2.0  # nothing sent before Retry-After


def test_5xx_is_retried_by_us_only(fcm, worker, settled) -> None:
    a, b = token(), token()
    fcm.script(a, "unavailable", times=2)
    fcm.script(b, "internal", times=1)
    register_device(APP, "a", "fcm", a)
    register_device(APP, "b", "fcm", b)
    st = settled(notify.delay(APP, ["a", "b"], title="t").id, timeout=60)
    assert st.counts == {"delivered": 2}
    # one request per attempt: firebase-admin's own 5xx retries are off
    assert [r.status for r in fcm.records if r.token == a] == [503, 503, 200]
    assert [r.status for r in fcm.records if r.token == b] == [500, 200]


def test_connection_dropped_mid_batch_ends_exactly_once(fcm, worker, settled) -> None:
    tokens = [token() for _ in range(60)]
    for i, t in enumerate(tokens):
        register_device(APP, f"d{i}", "fcm", t)
    fcm.drop_connections_after(20)
    st = settled(notify.delay(APP, [f"d{i}" for i in range(60)], title="t").id, timeout=60)
    assert st.counts == {"delivered": 60}
    assert delivered(fcm) == {t: 1 for t in tokens}
    assert any(r.error_code == "CONNECTION_DROPPED" for r in fcm.records)  # the fault really happened


def test_a_topic_reaches_subscribers_on_all_three_channels(fcm, apns, webpush, worker, settled) -> None:
    f, a, w = token(), os.urandom(32).hex(), webpush.subscribe()
    outsider = token()
    register_device(APP, "x", "fcm", f)
    register_device(APP, "y", "apns", a)
    register_device(APP, "z", "webpush", w)
    register_device(APP, "o", "fcm", outsider)
    subscribe_topic(APP, "news", "fcm", f)
    subscribe_topic(APP, "news", "apns", a)
    subscribe_topic(APP, "news", "webpush", w)
    subscribe_topic(APP, "news", "webpush", w)  # twice is once
    subscribe_topic(APP, "sport", "fcm", outsider)
    st = settled(notify.delay(APP, topic="news", title="Breaking").id)
    assert st.counts == {"delivered": 3}
    assert delivered(fcm) == {f: 1}
    assert apns.deliveries_by_token() == {a: 1}
    assert webpush.delivered_count(w) == 1
    assert unsubscribe_topic(APP, "news", "apns", a) is True
    st2 = settled(notify.delay(APP, topic="news", title="Again").id)
    assert st2.counts == {"delivered": 2} and apns.deliveries_by_token() == {a: 1}


def test_fcm_topic_and_condition_are_one_request_each(fcm, worker, settled) -> None:
    st = settled(notify.delay(APP, fcm_topic="weather", title="Rain").id)
    st2 = settled(notify.delay(APP, fcm_condition="'weather' in topics && 'uk' in topics", title="Rain").id)
    assert st.counts == {"delivered": 1} and st2.counts == {"delivered": 1}
    targets = [(r.topic, r.condition, r.status) for r in fcm.records]
    assert targets == [("weather", None, 200), (None, "'weather' in topics && 'uk' in topics", 200)]


def test_fcm_topic_membership_in_batches(fcm, worker) -> None:
    tokens = [token() for _ in range(25)]
    result = fcm_topic_members.delay(APP, "deals", tokens)
    wait_until(lambda: fcm.topic_members("deals") == set(tokens), what="25 FCM topic members")
    fcm_topic_members.delay(APP, "deals", tokens[:5], subscribe=False)
    wait_until(lambda: fcm.topic_members("deals") == set(tokens[5:]), what="5 removed")
    assert result.id


def test_subscribing_an_unregistered_device_is_refused(store) -> None:
    import pytest

    from notifier import InvalidNotification

    with pytest.raises(InvalidNotification, match="register_device first"):
        subscribe_topic(APP, "news", "fcm", token())


def test_a_cold_batch_fetches_one_oauth_token(fcm) -> None:
    trust_extra_ca(Path(ca_path()))
    cfg = FcmApp(Path(KEYS["fcm_file"]), FCM_PROJECT, fcm.base_url)

    async def run() -> list[Any]:
        channel = FcmChannel(APP, cfg, timeout=10, max_in_flight=100)
        try:
            devices = [Device(i, APP, Platform.FCM, token()) for i in range(200)]
            return await channel.send(build_notification(title="t"), devices)
        finally:
            await channel.close()

    outcomes = asyncio.run(run())
    assert len(outcomes) == 200 and len(fcm.delivered()) == 200
    assert fcm.token_requests == 1


def test_the_token_is_refreshed_ahead_of_expiry_once_per_batch_not_per_send() -> None:
    from simulators.fcm import FcmSimulator

    trust_extra_ca(Path(ca_path()))
    # tokens that live 5 minutes are always inside the refresh margin: each batch refreshes
    # first, once, instead of each send meeting a 401 and fetching its own
    with FcmSimulator(project_id="short-lived", token_lifetime=300) as sim:
        sa = Path(KEYS["fcm_file"]).with_name("short.json")
        sa.write_text(json.dumps(sim.service_account_info()))
        cfg = FcmApp(sa, "short-lived", sim.base_url)

        async def run() -> None:
            channel = FcmChannel(APP, cfg, timeout=10, max_in_flight=100)
            try:
                for _ in range(3):
                    devices = [Device(i, APP, Platform.FCM, token()) for i in range(100)]
                    await channel.send(build_notification(title="t"), devices)
            finally:
                await channel.close()

        asyncio.run(run())
        assert len(sim.delivered()) == 300 and not [r for r in sim.records if r.status == 401]
        assert sim.token_requests == 3


def test_a_third_party_auth_error_costs_one_request_and_no_token_fetch(fcm, worker, settled) -> None:
    """google-auth answers a 401 by refreshing the OAuth token and resending, twice; FCM's
    THIRD_PARTY_AUTH_ERROR (our APNs or Web Push credentials in Firebase) is a 401 no
    token fixes. Measured before the fix: 3 requests and 2 token fetches per message."""
    tokens = [token() for _ in range(9)]
    for i, t in enumerate(tokens):
        fcm.script(t, "third_party_auth")
        register_device(APP, f"tpa{i}", "fcm", t)
    settled(notify.delay(APP, "tpa0", title="warm").id)  # the worker's OAuth token, fetched once
    fetched = fcm.token_requests
    st = settled(notify.delay(APP, [f"tpa{i}" for i in range(9)], title="t").id)
    assert st.counts == {"failed": 9}
    sends = [r for r in fcm.records if r.token in tokens]
    assert len(sends) == 10  # the warm-up's one, and one per device: no resend
    assert fcm.token_requests == fetched  # and no token refresh
