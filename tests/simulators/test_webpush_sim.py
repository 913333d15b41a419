"""The Web Push simulator, driven by the real pywebpush/py_vapid (and aiohttp) clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid, Vapid01
from pywebpush import WebPusher, WebPushException, webpush, webpush_async

from simulators._webpush_crypto import DecryptError, SubscriptionKeys, b64url_decode, b64url_encode, decrypt
from simulators.tls import ca_path, client_context
from simulators.webpush import WebPushSimulator

SUB = "mailto:ops@example.com"


def public_b64(vapid: Vapid) -> str:
    return b64url_encode(vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


@pytest.fixture(scope="module")
def sim() -> Iterator[WebPushSimulator]:
    with WebPushSimulator() as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _clean(sim: WebPushSimulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def vapid() -> Vapid:
    key = Vapid()
    key.generate_keys()
    return key


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> Iterator[requests.Session]:
    # requests lets these variables override Session.verify (merge_environment_settings)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with requests.Session() as s:
        s.verify = ca_path()
        yield s


def push(sub: dict[str, Any], session: requests.Session, vapid: Vapid | None, data: str | None = "hi",
         claims: dict[str, Any] | None = None, **kwargs: Any) -> requests.Response:
    """pywebpush.webpush, returning the response whatever its status."""
    try:
        return webpush(sub, data, vapid_private_key=vapid,
                       vapid_claims=claims if claims is not None else ({"sub": SUB} if vapid else None),
                       requests_session=session, **kwargs)
    except WebPushException as exc:
        assert exc.response is not None, exc
        return exc.response


def test_delivered_push_round_trips_plaintext_and_headers(sim, session, vapid) -> None:
    sub = sim.subscribe()
    assert sub["endpoint"].startswith(f"{sim.base_url}/push/")
    assert len(b64url_decode(sub["keys"]["p256dh"])) == 65 and len(b64url_decode(sub["keys"]["auth"])) == 16
    text = 'Ünïcødé payload {"id": 42} ' * 10
    resp = push(sub, session, vapid, text, ttl=3600, headers={"Urgency": "high", "Topic": "order-42"})
    assert resp.status_code == 201
    assert resp.headers["Location"].startswith("/message/") and resp.headers["TTL"] == "3600"
    (rec,) = sim.wait_for(lambda r: len(r) == 1, timeout=5)
    assert (rec.status, rec.payload, rec.ttl, rec.urgency, rec.topic) == (201, text.encode(), 3600, "high", "order-42")
    assert rec.vapid_key == public_b64(vapid)
    assert rec.vapid_claims["aud"] == sim.base_url and rec.vapid_claims["sub"] == SUB
    assert resp.headers["Location"] == f"/message/{rec.message_id}"
    assert sim.delivered() == [rec] and sim.delivered_count(sub) == 1
    assert rec.subscription_id not in repr(rec)  # endpoint ids are capabilities: not logged


def test_send_async_with_aiohttp_session(sim, vapid) -> None:
    sub = sim.subscribe()

    async def main() -> tuple[int, str]:
        connector = aiohttp.TCPConnector(ssl=client_context())
        async with aiohttp.ClientSession(connector=connector) as http:
            resp = await webpush_async(sub, "async hello", vapid_private_key=vapid,
                                       vapid_claims={"sub": "https://example.com"},
                                       ttl=60, aiohttp_session=http)
            return resp.status, resp.headers["Location"]

    status, location = asyncio.run(main())
    assert status == 201 and location.startswith("/message/")
    assert [p.payload for p in sim.delivered()] == [b"async hello"]


def test_bodyless_push_and_legacy_webpush_scheme(sim, session, vapid) -> None:
    sub = sim.subscribe()
    legacy = Vapid01(vapid.private_key)  # Authorization: WebPush <jwt>, Crypto-Key: p256ecdsa=
    headers = legacy.sign({"sub": SUB, "aud": sim.base_url})
    assert headers["Authorization"].startswith("WebPush ")
    assert WebPusher(sub, requests_session=session).send(None, headers, ttl=5).status_code == 201
    (rec,) = sim.records
    assert rec.payload == b"" and rec.vapid_key == public_b64(vapid)


def test_unknown_subscription_is_404(sim, session, vapid) -> None:
    sub = sim.subscribe()
    forged = {**sub, "endpoint": f"{sim.base_url}/push/not-a-real-id"}
    assert push(forged, session, vapid).status_code == 404
    assert [(p.subscription_id, p.status) for p in sim.records] == [("not-a-real-id", 404)]


def test_missing_vapid_is_401(sim, session) -> None:
    resp = push(sim.subscribe(), session, None, ttl=60)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "vapid"
    assert sim.records[0].status == 401 and sim.delivered_count() == 0


def test_vapid_for_another_audience_is_403(sim, session, vapid) -> None:
    resp = push(sim.subscribe(), session, vapid, claims={"sub": SUB, "aud": "https://fcm.googleapis.com"})
    assert resp.status_code == 403
    assert sim.records[0].vapid_claims["aud"] == "https://fcm.googleapis.com"


def test_reused_claims_dict_carries_a_stale_aud(session, vapid) -> None:
    """pywebpush writes aud/exp into the caller's claims dict: reusing it for another
    push service signs the first service's origin, which the second must refuse."""
    claims = {"sub": SUB}
    with WebPushSimulator() as one, WebPushSimulator() as two:
        assert push(one.subscribe(), session, vapid, claims=claims).status_code == 201
        assert claims["aud"] == one.base_url and "exp" in claims  # mutated in place
        assert push(two.subscribe(), session, vapid, claims=claims).status_code == 403


@pytest.mark.parametrize("exp_offset", [-5, 2 * 24 * 3600])
def test_expired_or_too_distant_exp_is_403(sim, session, vapid, exp_offset) -> None:
    sub = sim.subscribe()
    # webpush() would replace a past exp; sign ourselves to send it as is
    headers = vapid.sign({"sub": SUB, "aud": sim.base_url, "exp": int(time.time()) + exp_offset})
    assert WebPusher(sub, requests_session=session).send("x", headers, ttl=60).status_code == 403
    assert sim.records[0].reason in {"token expired", "exp more than 24 hours ahead"}


def test_bad_signature_and_bad_sub_are_403(sim, session, vapid) -> None:
    sub = sim.subscribe()
    other = Vapid()
    other.generate_keys()
    headers = vapid.sign({"sub": SUB, "aud": sim.base_url})
    forged = headers["Authorization"].replace(public_b64(vapid), public_b64(other))
    assert WebPusher(sub, requests_session=session).send("x", {"Authorization": forged}, ttl=1).status_code == 403
    lax = Vapid(vapid.private_key, conf={"no-strict": True})
    headers = lax.sign({"sub": "ops@example.com", "aud": sim.base_url})
    assert WebPusher(sub, requests_session=session).send("x", headers, ttl=1).status_code == 403
    assert [p.reason for p in sim.records] == ["JWT signature does not verify with k",
                                                "sub must be a mailto: or https: URI"]


def test_restricted_vapid_key(session, vapid) -> None:
    other = Vapid()
    other.generate_keys()
    with WebPushSimulator(vapid_public_key=public_b64(vapid)) as restricted:
        sub = restricted.subscribe()
        assert push(sub, session, other).status_code == 403
        assert push(sub, session, vapid).status_code == 201
    with WebPushSimulator() as sim:  # per subscription, like applicationServerKey
        sub = sim.subscribe(application_server_key=public_b64(other))
        assert push(sub, session, vapid).status_code == 403
        assert push(sub, session, other).status_code == 201


def test_header_validation(sim, session, vapid) -> None:
    sub = sim.subscribe()
    assert push(sub, session, vapid, headers={"Urgency": "urgent"}).status_code == 400
    assert push(sub, session, vapid, headers={"Topic": "x" * 33}).status_code == 400
    assert push(sub, session, vapid, headers={"Topic": "not/base64"}).status_code == 400
    headers = vapid.sign({"sub": SUB, "aud": sim.base_url})  # no TTL at all: raw request
    assert session.post(sub["endpoint"], headers=headers).status_code == 400
    assert push(sub, session, vapid, headers={"Urgency": "very-low", "Topic": "a_B-9"}).status_code == 201
    assert [p.status for p in sim.records] == [400, 400, 400, 400, 201]


def test_default_ttl_is_zero(sim, session, vapid) -> None:
    push(sim.subscribe(), session, vapid)
    assert sim.delivered()[0].ttl == 0  # pywebpush's default: "deliver now or drop"


def test_body_size_limit(sim, session, vapid) -> None:
    sub = sim.subscribe()
    # RFC 8291 §4: 4096 - 86 (header) - 16 (tag) - 1 (delimiter) = 3993 octets of plaintext
    assert push(sub, session, vapid, "a" * 3993).status_code == 201
    assert push(sub, session, vapid, "a" * 3994).status_code == 413
    assert [(p.status, p.body_length) for p in sim.records] == [(201, 4096), (413, 4097)]


def test_wrong_encoding_and_undecryptable_body(sim, session, vapid) -> None:
    sub = sim.subscribe()
    assert push(sub, session, vapid, content_encoding="aesgcm").status_code == 415
    stranger = sim.subscribe()
    wrong_keys = {"endpoint": sub["endpoint"], "keys": stranger["keys"]}
    assert push(wrong_keys, session, vapid).status_code == 400
    assert [p.payload for p in sim.records] == [None, None]


def test_rfc8291_appendix_a_vector() -> None:
    ua = ec.derive_private_key(int.from_bytes(b64url_decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"), "big"),
                               ec.SECP256R1())
    keys = SubscriptionKeys.from_private(ua, b64url_decode("BTBZMqHH6r4Tts7J_aSIgg"))
    assert keys.public_json()["p256dh"] == (
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4")
    body = b64url_decode(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6T"
        "lzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")
    assert decrypt(body, keys) == b"When I grow up, I want to be a watermelon"
    with pytest.raises(DecryptError):
        decrypt(body[:-1] + bytes([body[-1] ^ 1]), keys)


@pytest.mark.parametrize(("behaviour", "params", "status"), [
    ("gone", {}, 410), ("not_found", {}, 404), ("too_large", {}, 413),
    ("unauthorized", {}, 403), ("error", {}, 500), ("error", {"status": 503}, 503),
])
def test_scripted_failures(sim, session, vapid, behaviour, params, status) -> None:
    sub = sim.subscribe(behaviour, **params)
    assert push(sub, session, vapid).status_code == status
    assert push(sub, session, vapid).status_code == status  # stays until re-scripted
    assert sim.records[0].payload == b"hi"  # validated and decrypted before the script
    sim.script(sub, "live")
    assert push(sub, session, vapid).status_code == 201


def test_throttle_gives_retry_after(sim, session, vapid) -> None:
    sub = sim.subscribe()
    sim.script(sub["endpoint"], "throttle", retry_after=7)
    resp = push(sub, session, vapid)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    sim.script(sub, "error", status=503, retry_after=3)
    resp = push(sub, session, vapid)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "3"


def test_times_scripts_revert_to_live(sim, session, vapid) -> None:
    sub = sim.subscribe()
    sim.script(sub["endpoint"].rsplit("/", 1)[1], "error", status=503, times=3)
    statuses = [push(sub, session, vapid).status_code for _ in range(5)]
    assert statuses == [503, 503, 503, 201, 201]
    assert push(sub, session, None).status_code == 401  # rejections do not consume times
    sim.script(sub, "gone", times=1)
    assert [push(sub, session, vapid).status_code for _ in range(2)] == [410, 201]


def test_slow_answers_late(sim, session, vapid) -> None:
    sub = sim.subscribe("slow", delay=0.3)
    started = time.monotonic()
    assert push(sub, session, vapid).status_code == 201
    assert time.monotonic() - started >= 0.3


def test_duplicate_counting(sim, session, vapid) -> None:
    a, b = sim.subscribe(), sim.subscribe()
    for sub in (a, b, a):
        push(sub, session, vapid)
    ids = {s["endpoint"].rsplit("/", 1)[1]: s for s in (a, b)}
    counts = sim.deliveries_by_token()
    assert sorted(counts.values()) == [1, 2] and set(counts) == set(ids)
    assert (sim.delivered_count(a), sim.delivered_count(b), sim.delivered_count()) == (2, 1, 3)


def test_concurrent_burst_is_counted_and_wakes_waiters(sim, vapid) -> None:
    subs = [sim.subscribe() for _ in range(5)]
    headers = vapid.sign({"sub": SUB, "aud": sim.base_url})  # one token, as a sender caches it

    async def burst() -> list[int]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context())) as http:
            async def one(i: int) -> int:
                pusher = WebPusher(subs[i % 5], aiohttp_session=http)
                resp = await pusher.send_async(f"n{i}", dict(headers), ttl=60)
                return resp.status
            return await asyncio.gather(*(one(i) for i in range(200)))

    sender = threading.Thread(target=lambda: results.extend(asyncio.run(burst())))
    results: list[int] = []
    sender.start()
    try:
        sim.wait_for(lambda records: len(records) == 200, timeout=60)
    finally:
        sender.join()
    assert results == [201] * 200
    assert sorted(sim.deliveries_by_token().values()) == [40] * 5
    assert sorted(p.payload for p in sim.delivered()) == sorted(f"n{i}".encode() for i in range(200))


def test_restart_keeps_port_and_subscriptions(session, vapid) -> None:
    with WebPushSimulator() as sim:
        sub = sim.subscribe()
        port = sim.port
        assert push(sub, session, vapid, "before").status_code == 201
        sim.restart()  # the session's pooled keep-alive connection is dropped
        assert sim.port == port
        assert push(sub, session, vapid, "after").status_code == 201
        assert [p.payload for p in sim.delivered()] == [b"before", b"after"]
    with pytest.raises(requests.ConnectionError):
        session.post(sub["endpoint"], timeout=2)


def test_wait_for_times_out_and_reset_clears(sim, session, vapid) -> None:
    sub = sim.subscribe("gone")
    push(sub, session, vapid)
    with pytest.raises(TimeoutError, match="1 record"):
        sim.wait_for(lambda records: any(p.status == 201 for p in records), timeout=0.2)
    sim.reset()
    assert sim.records == [] and sim.delivered_count() == 0
    assert push(sub, session, vapid).status_code == 201  # reset clears scripts too


def test_script_rejects_nonsense(sim) -> None:
    sub = sim.subscribe()
    with pytest.raises(ValueError):
        sim.script(sub, "explode")
    with pytest.raises(KeyError):
        sim.script("no-such-id", "gone")


def test_outage_answers_every_valid_push_until_outage_none(sim, session, vapid) -> None:
    sub = sim.subscribe("gone", times=1)
    sim.outage()
    assert push(sub, session, vapid).status_code == 503
    assert push(sub, session, None).status_code == 401  # the checks still come first
    sim.outage("throttle", retry_after=4)
    resp = push(sub, session, vapid)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "4"
    sim.outage(None)
    assert [push(sub, session, vapid).status_code for _ in range(2)] == [410, 201]  # script kept
    assert sim.deliveries_by_token() == {sub["endpoint"].rsplit("/", 1)[1]: 1}
