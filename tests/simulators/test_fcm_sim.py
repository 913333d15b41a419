"""The FCM simulator, driven by the real firebase-admin 7.7 (and google-auth / httpx for the
paths firebase-admin validates away client-side)."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import firebase_admin
import google.auth.exceptions
import google.auth.transport.requests
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import credentials, exceptions, messaging
from google.oauth2 import service_account

from simulators import tls
from simulators.fcm import FcmSimulator
from tests.simulators.h2probe import opening_settings

T = TypeVar("T")
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@pytest.fixture(scope="module")
def sim() -> Iterator[FcmSimulator]:
    with FcmSimulator(project_id="sim-project") as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def trust_sim_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx (firebase-admin's async client) reads SSL_CERT_FILE when the transport is built,
    # i.e. when the app's messaging service is first created; requests (google-auth's token
    # fetch, firebase-admin's sync client) reads REQUESTS_CA_BUNDLE on every request.
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca_path())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls.ca_path())


def point_at(app: firebase_admin.App, sim: FcmSimulator) -> None:
    service = messaging._get_messaging_service(app)  # built now, so under SSL_CERT_FILE
    service._fcm_url = sim.send_url
    service._fcm_topic_url = sim.topic_url


def make_app(sim: FcmSimulator, info: dict[str, str] | None = None) -> firebase_admin.App:
    cred = credentials.Certificate(info or sim.service_account_info())
    app = firebase_admin.initialize_app(cred, name=f"fcm-sim-{uuid.uuid4().hex}")
    point_at(app, sim)
    return app


@pytest.fixture
def app(sim: FcmSimulator) -> Iterator[firebase_admin.App]:
    sim.reset()
    application = make_app(sim)
    yield application
    firebase_admin.delete_app(application)


def run(app: firebase_admin.App, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run on ONE event loop, closing the app's httpx client on that same loop (it is bound
    to the loop it first ran on)."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            await messaging._get_messaging_service(app)._async_client.aclose()

    return asyncio.run(main())


def send_each(
        app: firebase_admin.App, messages: list[messaging.Message]) -> messaging.BatchResponse:
    return run(app, lambda: messaging.send_each_async(messages, app=app))


def access_token(sim: FcmSimulator, info: dict[str, str] | None = None) -> str:
    creds = service_account.Credentials.from_service_account_info(
        info or sim.service_account_info(), scopes=[SCOPE])
    creds.refresh(google.auth.transport.requests.Request())
    return str(creds.token)


def raw_send(sim: FcmSimulator, body: Any, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(http2=True, verify=tls.client_context()) as client:
        return client.post(sim.send_url, json=body, headers=headers)


def test_send_each_async_delivers_and_records(sim: FcmSimulator, app: firebase_admin.App) -> None:
    messages = [
        messaging.Message(fid=f"device-{i}", data={"n": str(i)},
                          notification=messaging.Notification(title="hi", body=f"body {i}"))
        for i in range(3)
    ] + [messaging.Message(topic="news", data={"k": "v"})]

    batch = send_each(app, messages)

    assert batch.success_count == 4, [r.exception for r in batch.responses]
    assert all(r.message_id.startswith("projects/sim-project/messages/") for r in batch.responses)
    assert sim.token_requests == 1  # one OAuth grant for the whole cold batch
    assert sim.deliveries_by_token() == {"device-0": 1, "device-1": 1, "device-2": 1}
    (record,) = [r for r in sim.delivered() if r.token == "device-1"]
    assert record.message["data"] == {"n": "1"}
    assert record.message["notification"] == {"title": "hi", "body": "body 1"}
    assert (record.target, record.http_version, record.status) == ("fid", "2", 200)
    topic_records = [r for r in sim.records if r.topic]
    assert [(r.topic, r.token, r.status) for r in topic_records] == [("news", None, 200)]


def test_sync_send_over_http11(sim: FcmSimulator, app: firebase_admin.App) -> None:
    message_id = messaging.send(messaging.Message(fid="sync-device"), app=app)
    assert message_id.startswith("projects/sim-project/messages/")
    assert [(r.token, r.http_version) for r in sim.delivered()] == [("sync-device", "1.1")]


def test_scripted_errors_surface_as_firebase_exceptions(
        sim: FcmSimulator, app: firebase_admin.App) -> None:
    expected = {
        "unregistered": messaging.UnregisteredError,
        "sender_mismatch": messaging.SenderIdMismatchError,
        "quota": messaging.QuotaExceededError,
        "invalid_token": exceptions.InvalidArgumentError,
        "unavailable": exceptions.UnavailableError,
        "internal": exceptions.InternalError,
        "third_party_auth": messaging.ThirdPartyAuthError,
    }
    for behaviour in expected:
        params = {"retry_after": 17} if behaviour == "quota" else {}
        sim.script(f"tok-{behaviour}", behaviour, **params)
    tokens = [f"tok-{b}" for b in expected] + ["tok-live"]

    batch = send_each(app, [messaging.Message(fid=t) for t in tokens])

    errors = dict(zip(tokens, (r.exception for r in batch.responses)))
    assert errors.pop("tok-live") is None
    for behaviour, exc_type in expected.items():
        assert type(errors[f"tok-{behaviour}"]) is exc_type, (behaviour, errors[f"tok-{behaviour}"])
    assert errors["tok-quota"].http_response.headers["Retry-After"] == "17"
    assert "not a valid FCM registration token" in str(errors["tok-invalid_token"])
    attempts = {t: len([r for r in sim.records if r.token == t]) for t in tokens}
    # firebase-admin retries 500/503 itself (1 + 4 retries) and answers a 401 by refreshing
    # its OAuth token and resending, twice.
    assert attempts["tok-unavailable"] == attempts["tok-internal"] == 5
    assert attempts["tok-third_party_auth"] == 3
    assert sim.token_requests == 3
    assert attempts["tok-quota"] == attempts["tok-unregistered"] == 1


def test_times_reverts_to_live(sim: FcmSimulator, app: firebase_admin.App) -> None:
    sim.script("flaky", "unavailable", times=2)
    batch = send_each(app, [messaging.Message(fid="flaky")])
    assert batch.success_count == 1
    assert [r.status for r in sim.records] == [503, 503, 200]


def test_expired_access_token_is_refreshed(sim: FcmSimulator, app: firebase_admin.App) -> None:
    async def scenario() -> tuple[messaging.BatchResponse, messaging.BatchResponse]:
        await messaging.send_each_async([messaging.Message(fid="a")], app=app)
        sim.expire_access_tokens()
        one = await messaging.send_each_async([messaging.Message(fid="b")], app=app)
        sim.expire_access_tokens()
        many = await messaging.send_each_async(
            [messaging.Message(fid=f"c{i}") for i in range(5)], app=app)
        return one, many

    one, many = run(app, scenario)
    assert (one.success_count, many.success_count) == (1, 5)
    assert [(r.token, r.status) for r in sim.records][:3] == [("a", 200), ("b", 401), ("b", 200)]
    # Every 401 makes firebase-admin fetch a new token: concurrent sends on an expired token
    # each fetch one (a cold start fetches only one: the refresh blocks the event loop).
    unauthorized = [r for r in sim.records if r.status == 401]
    assert len(unauthorized) >= 2
    assert sim.token_requests == 1 + len(unauthorized)


def test_server_side_validation(sim: FcmSimulator) -> None:
    sim.reset()
    token = access_token(sim)
    cases = {
        "message.data[0].value": {"message": {"token": "secret-token-1", "data": {"n": 1}}},
        "message.data": {"message": {"token": "secret-token-2", "data": {"k": "x" * 4096}}},
        "message.topic": {"message": {"token": "secret-token-3", "topic": "t"}},
        "message": {"message": {"data": {"k": "v"}}},
        "message.bogus": {"message": {"token": "secret-token-4", "bogus": 1}},
    }
    for field, body in cases.items():
        resp = raw_send(sim, body, token)
        assert resp.status_code == 400, (field, resp.text)
        error = resp.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": "INVALID_ARGUMENT"} in error["details"]
        assert error["details"][1]["fieldViolations"][0]["field"] == field
        assert "secret-token" not in resp.text
    resp = raw_send(sim, {"message": {"token": "x"}}, None)
    assert (resp.status_code, resp.json()["error"]["status"]) == (401, "UNAUTHENTICATED")
    resp = raw_send(sim, {"message": {"token": "dry"}, "validate_only": True}, token)
    assert resp.json() == {"name": "projects/sim-project/messages/fake_message_id"}
    assert [r.status for r in sim.records] == [400] * 5 + [401, 200]
    assert sim.delivered() == []


def test_bad_service_account_key_is_rejected(sim: FcmSimulator) -> None:
    sim.reset()
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = copy.deepcopy(sim.service_account_info())
    forged["private_key"] = other_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        access_token(sim, forged)
    wrong_email = dict(sim.service_account_info(), client_email="x@y.iam.gserviceaccount.com")
    with pytest.raises(google.auth.exceptions.RefreshError, match="Invalid email"):
        access_token(sim, wrong_email)
    # Through firebase-admin the refresh error escapes per-message handling: the whole batch
    # raises UnknownError.
    app = make_app(sim, forged)
    try:
        with pytest.raises(exceptions.UnknownError) as info:
            send_each(app, [messaging.Message(fid="a")])
        assert isinstance(info.value.cause, google.auth.exceptions.RefreshError)
    finally:
        firebase_admin.delete_app(app)
    assert sim.token_requests == 3
    assert sim.records == []


def test_topic_subscriptions(sim: FcmSimulator, app: firebase_admin.App,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    sim.script("gone", "unregistered")
    result = messaging.subscribe_to_topic(["a", "b", "gone"], "/topics/news", app=app)
    assert (result.success_count, result.failure_count) == (2, 1)
    assert [(e.index, e.reason) for e in result.errors] == [(2, "UNREGISTERED")]
    assert sim.topic_members("news") == {"a", "b"}

    result = messaging.unsubscribe_from_topic(["a", "never-subscribed"], "news", app=app)
    assert result.success_count == 2
    assert sim.topic_members("news") == {"b"}

    # The legacy Instance ID API: its URL is a class attribute, read at call time.
    monkeypatch.setattr(messaging._MessagingService, "IID_URL", sim.base_url)
    with pytest.warns(DeprecationWarning):
        result = messaging.subscribe_to_topic_legacy(["c", "gone"], "news", app=app)
    assert [(e.index, e.reason) for e in result.errors] == [(1, "NOT_FOUND")]
    assert sim.topic_members("/topics/news") == {"b", "c"}
    assert [(t.op, t.api, t.status) for t in sim.topic_requests][-1] == ("subscribe", "iid", 200)


def test_drop_connections_fails_in_flight_sends(sim: FcmSimulator, app: firebase_admin.App) -> None:
    sim.script("slow-1", "slow", delay=60)
    sim.script("slow-2", "slow", delay=60)
    sim.drop_connections_after(2)

    async def scenario() -> tuple[messaging.BatchResponse, messaging.BatchResponse]:
        dropped = await messaging.send_each_async(
            [messaging.Message(fid="slow-1"), messaging.Message(fid="slow-2")], app=app)
        after = await messaging.send_each_async([messaging.Message(fid="next")], app=app)
        return dropped, after

    dropped, after = run(app, scenario)
    assert dropped.failure_count == 2
    for response in dropped.responses:
        assert type(response.exception) is exceptions.UnknownError
        assert isinstance(response.exception.cause, httpx.TransportError)
    assert after.success_count == 1  # once only; the client reconnects
    seen = [(r.token, r.status, r.error_code) for r in sim.records]
    dropped_code = "CONNECTION_DROPPED"
    assert sorted(seen[:2]) == [("slow-1", 0, dropped_code), ("slow-2", 0, dropped_code)]
    assert seen[2:] == [("next", 200, None)]


def test_restart_keeps_port_and_drops_connections(
        sim: FcmSimulator, app: firebase_admin.App) -> None:
    port = sim.port

    async def scenario() -> list[messaging.BatchResponse]:
        batches = [await messaging.send_each_async([messaging.Message(fid="before")], app=app)]
        sim.restart()
        for _ in range(2):  # the pooled connection is dead: at most one failure, then reconnect
            batch = await messaging.send_each_async([messaging.Message(fid="after")], app=app)
            batches.append(batch)
        return batches

    batches = run(app, scenario)
    assert sim.port == port
    assert [b.success_count for b in batches] in ([1, 1, 1], [1, 0, 1]), [
        r.exception for b in batches for r in b.responses]
    assert [r.token for r in sim.delivered()][:2] == ["before", "after"]


def test_wait_for(sim: FcmSimulator, app: firebase_admin.App) -> None:
    send_each(app, [messaging.Message(fid="w")])
    sim.wait_for(lambda records: any(r.token == "w" for r in records), timeout=5)
    with pytest.raises(TimeoutError, match="1 record"):
        sim.wait_for(lambda records: len(records) > 1, timeout=0.2)


def test_outage_answers_every_valid_send_until_outage_none(sim: FcmSimulator) -> None:
    sim.reset()
    token = access_token(sim)
    sim.script("o-1", "unregistered", times=1)
    sim.outage()
    resp = raw_send(sim, {"message": {"token": "o-1"}}, token)
    assert (resp.status_code, resp.json()["error"]["status"]) == (503, "UNAVAILABLE")
    assert raw_send(sim, {"message": {"token": "o-1"}}, None).status_code == 401  # checks first
    sim.outage(None)
    statuses = [raw_send(sim, {"message": {"token": "o-1"}}, token).status_code for _ in range(2)]
    assert statuses == [404, 200]  # the script was not consumed by the outage
    assert sim.deliveries_by_token() == {"o-1": 1} and sim.delivered_count("o-1") == 1


# -- flow control: Google's front ends open large windows ---------------------------------
def test_windows_are_a_mebibyte_as_googles_front_ends_open_streams(sim: FcmSimulator) -> None:
    # with h2's defaults (64 KiB), 100 concurrent sends in each of four processes on two
    # cores left some of firebase-admin's requests (httpx, httpcore) waiting for window
    # until their timeout, unsent (simulators/fcm.py)
    assert opening_settings(sim.port)[1::2] == (1 << 20, 1 << 20)  # stream, connection


def test_windows_can_be_left_at_the_h2_default() -> None:
    with FcmSimulator(flow_window=65_535) as small:
        assert opening_settings(small.port)[1::2] == (65_535, 65_535)
