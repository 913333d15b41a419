"""The APNs simulator, driven by the real aioapns 4.0 client (and a raw h2 client where
aioapns cannot show the wire: SETTINGS frames, headers it never sends, RST_STREAM)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import APNsProductionClientProtocol
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated, DataReceived, RemoteSettingsChanged, ResponseReceived, StreamEnded, StreamReset,
)
from h2.settings import SettingCodes
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import tls
from simulators.apns import ApnsSimulator, generate_signing_key

TEAM = "TEAM123456"
KID = "KEY1234567"
TOPIC = "com.example.notifier"
PRIVATE_PEM, PUBLIC_PEM = generate_signing_key()


def token(n: int) -> str:
    return f"{n:064x}"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def sim() -> Any:
    with ApnsSimulator(TEAM, {KID: PUBLIC_PEM}) as simulator:
        yield simulator


# -- aioapns pointed at the simulator -----------------------------------------------
@asynccontextmanager
async def apns_client(sim: ApnsSimulator, key_pem: str = PRIVATE_PEM,
                      attempts: int = 1) -> AsyncIterator[tuple[APNs, list[Any]]]:
    """An aioapns client talking to ``sim``; yields (client, its live protocols)."""
    loop = asyncio.get_running_loop()
    protocols: list[Any] = []

    class SimProtocol(APNsProductionClientProtocol):
        APNS_SERVER = "127.0.0.1"  # connect address, and the `host` header aioapns sends
        APNS_PORT = sim.port

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.lost: asyncio.Future[None] = loop.create_future()
            protocols.append(self)
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                self.lost.set_result(None)

    client = APNs(key=key_pem, key_id=KID, team_id=TEAM, topic=TOPIC,
                  ssl_context=tls.client_context(), max_connection_attempts=attempts)
    client.pool.protocol_class = SimProtocol  # instance attribute set in the pool's __init__
    try:
        yield client, protocols
    finally:
        for protocol in protocols:
            protocol.close()
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in protocols)), 5)


def notification(tok: str, **kwargs: Any) -> NotificationRequest:
    return NotificationRequest(device_token=tok, message={"aps": {"alert": "hi"}}, **kwargs)


# -- a minimal raw HTTP/2 client --------------------------------------------------------
class RawClient:
    """Blocking h2 client; every read is bounded by the socket timeout (no sleeps)."""

    def __init__(self, port: int) -> None:
        ctx = tls.client_context()
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.max_streams: list[int] = []  # every MAX_CONCURRENT_STREAMS the server advertised
        self.responses: dict[int, dict[str, Any]] = {}
        self.unread = b""  # received bytes held back from h2, processed by the next pump
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def post(self, path: str, headers: dict[str, str] | None = None, body: bytes = b'{"aps":{}}',
             method: str = "POST", auth: str | None = None, flush: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":path", path),
                (":authority", "127.0.0.1"), ("apns-topic", TOPIC)]
        if auth is None:
            auth = "bearer " + make_jwt()
        if auth:
            hdrs.append(("authorization", auth))
        hdrs += list((headers or {}).items())
        self.conn.send_headers(sid, hdrs, end_stream=not body)
        step = self.conn.max_outbound_frame_size
        for start in range(0, len(body), step):
            self.conn.send_data(sid, body[start:start + step], end_stream=start + step >= len(body))
        if flush:
            self._flush()
        self.responses[sid] = {"status": None, "headers": {}, "body": b"", "data_frames": 0,
                               "ended": False, "reset": None}
        return sid

    def pump_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            data, self.unread = self.unread or self.sock.recv(65536), b""
            assert data, "server closed the connection"
            for event in self.conn.receive_data(data):
                response = self.responses.get(getattr(event, "stream_id", 0) or 0)
                if isinstance(event, RemoteSettingsChanged):
                    change = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                    if change is not None:
                        self.max_streams.append(change.new_value)
                elif isinstance(event, ResponseReceived) and response is not None:
                    response["headers"] = dict(event.headers)
                    response["status"] = int(response["headers"][":status"])
                elif isinstance(event, DataReceived) and response is not None:
                    response["body"] += event.data
                    response["data_frames"] += 1
                elif isinstance(event, StreamEnded) and response is not None:
                    response["ended"] = True
                elif isinstance(event, StreamReset) and response is not None:
                    response["reset"] = event.error_code
            self._flush()

    def response(self, sid: int) -> dict[str, Any]:
        self.pump_until(lambda: self.responses[sid]["ended"] or self.responses[sid]["reset"] is not None)
        return self.responses[sid]


def make_jwt(private_pem: str = PRIVATE_PEM, kid: str = KID, iss: str = TEAM,
             iat: int | None = None) -> str:
    return jwt.encode({"iss": iss, "iat": int(time.time()) if iat is None else iat},
                      private_pem, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def raw(sim: ApnsSimulator) -> Any:
    client = RawClient(sim.port)
    yield client
    client.close()


# -- aioapns ----------------------------------------------------------------------------
def test_live_token_gets_200_and_everything_is_recorded(sim: ApnsSimulator) -> None:
    async def scenario() -> NotificationResult:
        async with apns_client(sim) as (client, _):
            return await client.send_notification(notification(
                token(1), priority=10, time_to_live=3600, collapse_key="score",
                push_type=PushType.ALERT))

    result = run(scenario())
    assert result.is_successful and result.status == "200" and result.description is None
    (record,) = sim.records
    assert record.status == 200 and record.token == token(1) and record.apns_id == result.notification_id
    assert record.payload == {"aps": {"alert": "hi"}}
    assert record.headers["apns-topic"] == TOPIC
    assert record.headers["apns-push-type"] == "alert"
    assert record.headers["apns-priority"] == "10"
    assert record.headers["apns-collapse-id"] == "score"
    assert int(record.headers["apns-expiration"]) >= int(time.time()) + 3500
    assert record.headers["authorization"] == "bearer <redacted>"
    assert (record.jwt_kid, record.jwt_iss) == (KID, TEAM)
    assert abs(record.jwt_iat - time.time()) < 60  # type: ignore[operator]
    assert sim.delivered() == [record] and sim.deliveries_by_token() == {token(1): 1}
    assert sim.connections_opened == 1 and sim.streams_open == 0


def test_dead_token_gets_410_with_timestamp_in_the_result(sim: ApnsSimulator) -> None:
    sim.script(token(2), "dead", timestamp_ms=1_700_000_000_123)

    async def scenario() -> NotificationResult:
        async with apns_client(sim) as (client, _):
            return await client.send_notification(notification(token(2)))

    result = run(scenario())
    assert not result.is_successful
    assert (result.status, result.description, result.timestamp) == ("410", "Unregistered", 1_700_000_000_123)
    assert [(r.status, r.reason) for r in sim.records] == [(410, "Unregistered")]
    assert sim.delivered() == []


def test_wrong_signing_key_gets_403_invalid_provider_token(sim: ApnsSimulator) -> None:
    other_private, _ = generate_signing_key()

    async def scenario() -> NotificationResult:
        async with apns_client(sim, key_pem=other_private) as (client, _):
            return await client.send_notification(notification(token(3)))

    result = run(scenario())
    assert (result.status, result.description) == ("403", "InvalidProviderToken")
    (record,) = sim.records
    assert record.jwt_kid is None and record.headers["authorization"] == "bearer <redacted>"


def test_times_reverts_to_live_and_slow_does_not_hold_up_other_streams(sim: ApnsSimulator) -> None:
    sim.script(token(4), "throttled", times=1)
    sim.script(token(5), "slow", delay=0.3)

    async def scenario() -> list[str]:
        async with apns_client(sim) as (client, _):
            first = await client.send_notification(notification(token(4)))
            second = await client.send_notification(notification(token(4)))
            slow = asyncio.ensure_future(client.send_notification(notification(token(5))))
            fast = await client.send_notification(notification(token(6)))
            assert not slow.done()  # answered after the fast one, on the same connection
            return [first.status, second.status, fast.status, (await slow).status]

    assert run(scenario()) == ["429", "200", "200", "200"]
    assert [r.reason for r in sim.records] == ["TooManyRequests", None, None, None]


@pytest.mark.parametrize("behaviour", ["silent", "reset", "empty_error"])
def test_unanswered_streams_leave_aioapns_waiting(sim: ApnsSimulator, behaviour: str) -> None:
    """aioapns has no per-request timeout, ignores RST_STREAM ("Unknown event") and only
    resolves an error when a DATA frame carries a reason: all three wait forever."""
    sim.script(token(7), behaviour)

    async def scenario() -> None:
        async with apns_client(sim) as (client, protocols):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.send_notification(notification(token(7))), 0.5)
            # forget the cancelled future, or aioapns's connection_lost raises
            # InvalidStateError setting an exception on it when we close
            protocols[0].requests.clear()

    run(scenario())
    (record,) = sim.records
    assert record.behaviour == behaviour
    assert record.status == (500 if behaviour == "empty_error" else None)


def test_flow_control_window_exhausted_by_error_bodies_stalls_aioapns(sim: ApnsSimulator) -> None:
    """aioapns never acknowledges DATA, so error bodies drain the connection window
    (65,535 bytes): the next body waits for a WINDOW_UPDATE that never comes."""
    sim.script(token(8), "dead", timestamp_ms=1_700_000_000_000)
    body_size = len(b'{"reason":"Unregistered","timestamp":1700000000000}')
    answered = 65_535 // body_size  # 1285

    async def scenario() -> None:
        async with apns_client(sim) as (client, protocols):
            for _ in range(answered):
                assert (await client.send_notification(notification(token(8)))).status == "410"
            stalled = asyncio.ensure_future(client.send_notification(notification(token(8))))
            done, _ = await asyncio.wait({stalled}, timeout=1.0)
            assert not done
            assert sim.pending_bodies == 1 and sim.streams_open == 1
            # what a fixed client does: give the window back; the queued body flows
            h2conn = protocols[0].conn
            h2conn.increment_flow_control_window(65_535)
            protocols[0].flush()
            result = await asyncio.wait_for(stalled, 5)
            assert (result.status, result.description) == ("410", "Unregistered")

    run(scenario())
    assert sim.pending_bodies == 0 and len(sim.records) == answered + 1


def test_restart_drops_connections_and_aioapns_reconnects(sim: ApnsSimulator) -> None:
    async def scenario() -> list[str]:
        async with apns_client(sim, attempts=3) as (client, protocols):
            first = await client.send_notification(notification(token(9)))
            await asyncio.to_thread(sim.restart)
            second = await client.send_notification(notification(token(9)))
            return [first.status, second.status]

    port = sim.port
    assert run(scenario()) == ["200", "200"]
    assert sim.port == port and sim.connections_opened == 2
    assert {r.connection_id for r in sim.delivered()} == {1, 2}


def test_empty_data_frame_after_200_kills_the_aioapns_connection(sim: ApnsSimulator) -> None:
    """aioapns json-decodes every DATA frame: an empty one raises inside data_received,
    and asyncio tears the connection down (after the 200 was already reported)."""
    sim.script(token(10), "empty_data_200")

    async def scenario() -> str:
        async with apns_client(sim) as (client, protocols):
            result = await client.send_notification(notification(token(10)))
            await asyncio.wait_for(protocols[0].lost, 5)
            return result.status

    assert run(scenario()) == "200"


# -- raw HTTP/2 ------------------------------------------------------------------------
def test_max_concurrent_streams_drops_to_one_after_a_rejection(sim: ApnsSimulator, raw: RawClient) -> None:
    sim.script(token(11), "bad")
    raw.pump_until(lambda: raw.max_streams == [1000])
    assert raw.response(raw.post(f"/3/device/{token(12)}"))["status"] == 200
    assert raw.max_streams == [1000]  # unchanged: no extra SETTINGS
    assert raw.response(raw.post(f"/3/device/{token(11)}"))["status"] == 400
    raw.pump_until(lambda: raw.max_streams == [1000, 1])
    (connection_id,) = {r.connection_id for r in sim.records}
    assert sim.max_concurrent_streams(connection_id) == 1
    assert raw.response(raw.post(f"/3/device/{token(11)}"))["status"] == 400
    assert raw.response(raw.post(f"/3/device/{token(12)}"))["status"] == 200
    raw.pump_until(lambda: raw.max_streams == [1000, 1, 1000])
    assert sim.max_concurrent_streams(connection_id) == 1000


def test_a_stream_over_the_acked_limit_is_refused_and_the_connection_lives(
        sim: ApnsSimulator, raw: RawClient) -> None:
    sim.script(token(11), "bad")
    sim.script(token(20), "slow", delay=0.3)
    assert raw.response(raw.post(f"/3/device/{token(11)}"))["status"] == 400
    raw.pump_until(lambda: raw.max_streams == [1000, 1])  # and ACKed by that same pump
    # a client that ignores the limit (h2 would refuse to send the second stream)
    raw.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
    raw.conn.remote_settings.acknowledge()
    window = raw.conn.outbound_flow_control_window
    slow = raw.post(f"/3/device/{token(20)}", flush=False)
    # the excess stream carries 48000 bytes of DATA, sent after its HEADERS
    excess = raw.post(f"/3/device/{token(21)}", {"apns-id": "X-1"}, b"x" * 48000)
    assert raw.response(excess)["reset"] == 7  # REFUSED_STREAM
    assert raw.response(excess)["status"] is None
    assert raw.response(slow)["status"] == 200 and raw.responses[slow]["reset"] is None
    # the refused stream's DATA was ignored but credited to the connection window
    assert raw.conn.outbound_flow_control_window > window - 48000
    assert raw.response(raw.post(f"/3/device/{token(22)}"))["status"] == 200  # still open
    refused = [r for r in sim.records if r.reason == "REFUSED_STREAM"]
    assert [(r.token, r.status, r.behaviour, r.payload, r.headers["apns-id"]) for r in refused] == [
        (token(21), None, "refused", None, "X-1")]
    assert refused[0].headers["authorization"] == "bearer <redacted>"
    assert sim.refused_streams == 1
    assert [r.status for r in sim.records if r.reason != "REFUSED_STREAM"] == [400, 200, 200]
    assert len({r.connection_id for r in sim.records}) == sim.connections_opened == 1
    assert sim.streams_open == 0


def test_a_lowered_limit_applies_only_once_the_client_acks_it(sim: ApnsSimulator, raw: RawClient) -> None:
    """h2 alone matched the ACK of the initial SETTINGS to the first pending change."""
    sim.script(token(11), "bad")
    sim.script(token(23), "silent")
    raw.post(f"/3/device/{token(11)}")  # before ACKing anything: the server lowers the limit
    sim.wait_for(lambda records: len(records) == 1, timeout=5)
    while len(raw.unread) < 9 or len(raw.unread) < 9 + int.from_bytes(raw.unread[:3], "big"):
        raw.unread += raw.sock.recv(65536)
    first = 9 + int.from_bytes(raw.unread[:3], "big")
    assert raw.unread[3] == 0x4  # the server's initial SETTINGS (MAX_CONCURRENT_STREAMS 1000)
    raw.conn.receive_data(raw.unread[:first])  # ACK only that; SETTINGS(1) is still unread
    raw.unread = raw.unread[first:]
    # legal: the client has not ACKed the lower limit yet, so 2 open streams are fine
    silent = raw.post(f"/3/device/{token(23)}")
    live = raw.post(f"/3/device/{token(24)}")
    assert raw.response(live)["status"] == 200
    raw.pump_until(lambda: raw.max_streams == [1, 1000])
    assert raw.responses[silent]["reset"] is None and raw.responses[silent]["status"] is None
    assert sim.refused_streams == 0 and sim.connections_opened == 1


def test_success_is_headers_only_and_errors_carry_a_json_reason(sim: ApnsSimulator, raw: RawClient) -> None:
    apns_id = str(uuid.uuid4())
    ok = raw.response(raw.post(f"/3/device/{token(13)}", {"apns-id": apns_id}))
    assert ok["status"] == 200 and ok["headers"]["apns-id"] == apns_id
    assert ok["data_frames"] == 0 and ok["body"] == b""
    sim.script(token(14), "not_for_topic")
    bad = raw.response(raw.post(f"/3/device/{token(14)}"))
    assert bad["status"] == 400 and json.loads(bad["body"]) == {"reason": "DeviceTokenNotForTopic"}
    generated = raw.response(raw.post(f"/3/device/{token(13)}"))["headers"]["apns-id"]
    assert uuid.UUID(generated) and sim.records[-1].apns_id == generated


@pytest.mark.parametrize(("headers", "body", "path", "method", "status", "reason"), [
    ({}, b'{"aps":{}}', "/3/device/" + token(1), "GET", 405, "MethodNotAllowed"),
    ({}, b'{"aps":{}}', "/2/device/" + token(1), "POST", 404, "BadPath"),
    ({"apns-priority": "7"}, b'{"aps":{}}', None, "POST", 400, "BadPriority"),
    ({"apns-expiration": "soon"}, b'{"aps":{}}', None, "POST", 400, "BadExpirationDate"),
    ({"apns-collapse-id": "x" * 65}, b'{"aps":{}}', None, "POST", 400, "BadCollapseId"),
    ({"apns-push-type": "telegram"}, b'{"aps":{}}', None, "POST", 400, "InvalidPushType"),
    ({"apns-id": "not-a-uuid"}, b'{"aps":{}}', None, "POST", 400, "BadMessageId"),
    ({}, b"", None, "POST", 400, "PayloadEmpty"),
    ({}, b'{"a":"' + b"x" * 4100 + b'"}', None, "POST", 413, "PayloadTooLarge"),
    ({}, b'{"aps":{}}', "/3/device/" + "zz" * 32, "POST", 400, "BadDeviceToken"),
    ({}, b'{"aps":{}}', "/3/device/abc123", "POST", 400, "BadDeviceToken"),
    ({}, b'{"aps":{}}', "/3/device/", "POST", 400, "MissingDeviceToken"),
])
def test_request_validation(sim: ApnsSimulator, raw: RawClient, headers: dict[str, str], body: bytes,
                            path: str | None, method: str, status: int, reason: str) -> None:
    response = raw.response(raw.post(path or f"/3/device/{token(1)}", headers, body, method))
    assert (response["status"], json.loads(response["body"])["reason"]) == (status, reason)
    assert (sim.records[-1].status, sim.records[-1].reason) == (status, reason)


def test_missing_topic(sim: ApnsSimulator) -> None:
    client = RawClient(sim.port)
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"),
                                       (":path", f"/3/device/{token(1)}"), (":authority", "x"),
                                       ("authorization", "bearer " + make_jwt())])
        client.conn.send_data(sid, b"{}", end_stream=True)
        client._flush()
        client.responses[sid] = {"status": None, "headers": {}, "body": b"", "data_frames": 0,
                                 "ended": False, "reset": None}
        assert json.loads(client.response(sid)["body"]) == {"reason": "MissingTopic"}
    finally:
        client.close()


@pytest.mark.parametrize(("auth", "reason"), [
    ("", "MissingProviderToken"),
    ("bearer " + make_jwt(iat=int(time.time()) - 3700), "ExpiredProviderToken"),
    ("bearer " + make_jwt(kid="UNKNOWNKID"), "InvalidProviderToken"),
    ("bearer " + make_jwt(iss="OTHERTEAM1"), "InvalidProviderToken"),
    ("bearer not.a.jwt", "InvalidProviderToken"),
])
def test_provider_token_checks(sim: ApnsSimulator, raw: RawClient, auth: str, reason: str) -> None:
    response = raw.response(raw.post(f"/3/device/{token(1)}", auth=auth))
    assert (response["status"], json.loads(response["body"])) == (403, {"reason": reason})


def test_token_max_age_is_configurable() -> None:
    with ApnsSimulator(TEAM, {KID: PUBLIC_PEM}, token_max_age=60) as short:
        client = RawClient(short.port)
        try:
            old = "bearer " + make_jwt(iat=int(time.time()) - 120)
            assert json.loads(client.response(client.post(f"/3/device/{token(1)}", auth=old))["body"]) \
                == {"reason": "ExpiredProviderToken"}
            assert client.response(client.post(f"/3/device/{token(1)}"))["status"] == 200
        finally:
            client.close()


def test_failing_empty_error_and_reset(sim: ApnsSimulator, raw: RawClient) -> None:
    sim.script(token(15), "failing", status=503)
    sim.script(token(16), "empty_error", status=500)
    sim.script(token(17), "reset")
    failing = raw.response(raw.post(f"/3/device/{token(15)}"))
    assert failing["status"] == 503 and json.loads(failing["body"]) == {"reason": "ServiceUnavailable"}
    empty = raw.response(raw.post(f"/3/device/{token(16)}"))
    assert empty["status"] == 500 and empty["data_frames"] == 0
    reset = raw.response(raw.post(f"/3/device/{token(17)}"))
    assert reset["status"] is None and reset["reset"] == 2  # INTERNAL_ERROR
    assert [r.status for r in sim.records] == [503, 500, None]
    sim.wait_for(lambda records: len(records) == 3, timeout=1)
    assert sim.streams_open == 0


def test_partial_data_mode_splits_a_body_to_fit_the_window() -> None:
    with ApnsSimulator(TEAM, {KID: PUBLIC_PEM}, partial_data=True) as partial:
        partial.script(token(18), "not_for_topic")
        body = b'{"reason":"DeviceTokenNotForTopic"}'
        client = RawClient(partial.port)
        try:
            for _ in range(65_535 // len(body)):
                assert client.response(client.post(f"/3/device/{token(18)}"))["status"] == 400
            sid = client.post(f"/3/device/{token(18)}")
            client.pump_until(lambda: client.responses[sid]["data_frames"] == 1)
            assert client.responses[sid]["body"] == body[:65_535 % len(body)]
            assert partial.pending_bodies == 1
        finally:
            client.close()


def test_script_rejects_unknown_behaviour(sim: ApnsSimulator) -> None:
    with pytest.raises(ValueError, match="unknown APNs behaviour"):
        sim.script(token(1), "exploding")


def test_wait_for_times_out_with_a_useful_message(sim: ApnsSimulator) -> None:
    with pytest.raises(TimeoutError, match="0 record"):
        sim.wait_for(lambda records: len(records) > 0, timeout=0.05)


def test_reset_clears_records_and_scripts(sim: ApnsSimulator, raw: RawClient) -> None:
    sim.script(token(19), "dead")
    assert raw.response(raw.post(f"/3/device/{token(19)}"))["status"] == 410
    sim.reset()
    assert sim.records == []
    assert raw.response(raw.post(f"/3/device/{token(19)}"))["status"] == 200


def test_outage_answers_every_valid_notification_until_outage_none(sim: ApnsSimulator, raw: RawClient) -> None:
    sim.script(token(25), "dead", times=1)
    sim.outage()
    failing = raw.response(raw.post(f"/3/device/{token(25)}"))
    assert failing["status"] == 503 and json.loads(failing["body"]) == {"reason": "ServiceUnavailable"}
    assert raw.response(raw.post(f"/3/device/{token(25)}", auth=""))["status"] == 403  # checks first
    sim.outage(None)
    statuses = [raw.response(raw.post(f"/3/device/{token(25)}"))["status"] for _ in range(2)]
    assert statuses == [410, 200]  # the script was not consumed by the outage
    assert sim.deliveries_by_token() == {token(25): 1} and sim.delivered_count(token(25)) == 1


# -- malformed header blocks: the simulator checks them itself, as h2 would -----------------
_NAMES = [":method", ":scheme", ":path", ":authority", ":status", ":protocol", ":other", "host", "te",
          "connection", "keep-alive", "apns-id", "Apns-Id", "a:b", "", "x y", "é", "authorization"]
_VALUES = ["POST", "CONNECT", "https", "/3/device/ab", "", " x", "x\t", "a\nb", "a\rb", "a\x00b", "trailers",
           "gzip", "127.0.0.1", "other.example", "é"]
_REQUEST = [(":method", "POST"), (":scheme", "https"), (":path", "/3/device/ab"), (":authority", "127.0.0.1")]


def _h2_accepts(headers: list[tuple[str, str]], trailers: bool) -> bool:
    from h2.exceptions import ProtocolError
    from h2.utilities import HeaderValidationFlags, validate_headers

    flags = HeaderValidationFlags(is_client=False, is_trailer=trailers, is_response_header=False,
                                  is_push_promise=False)
    try:
        list(validate_headers([(n.encode(), v.encode()) for n, v in headers], flags))
    except ProtocolError:
        return False
    return True


@settings(max_examples=3000, deadline=None)
@given(base=st.booleans(), trailers=st.booleans(), data=st.data(),
       extra=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=4))
def test_header_checks_accept_exactly_what_h2_would(base: bool, trailers: bool, data: st.DataObject,
                                                    extra: list[tuple[str, str]]) -> None:
    from h2.exceptions import ProtocolError

    from simulators._apns_h2fast import check_request_headers

    headers = list(_REQUEST) if base else []
    for field in extra:
        headers.insert(data.draw(st.integers(0, len(headers))), field)
    try:
        check_request_headers(headers, trailers=trailers)
        ours = True
    except ProtocolError:
        ours = False
    assert ours == _h2_accepts(headers, trailers), headers


def _until_goaway(raw: RawClient) -> list[Any]:
    """Every event up to and including the server's GOAWAY."""
    events: list[Any] = []
    while not any(isinstance(e, ConnectionTerminated) for e in events):
        data = raw.sock.recv(65536)
        assert data, "closed without a GOAWAY"
        events += raw.conn.receive_data(data)
    return events


@pytest.mark.parametrize("field", [("Apns-Priority", "10"), ("connection", "close"), ("apns-topic", " x"),
                                   (b"apns-\xffid", b"1"), (b"apns-id", b"\xff\xfe")],
                         ids=["upper-case", "connection", "padded", "name-not-utf8", "value-not-utf8"])
def test_a_malformed_header_block_ends_the_connection_with_protocol_error(
        sim: ApnsSimulator, raw: RawClient, field: tuple[Any, Any]) -> None:
    raw.conn.config.validate_outbound_headers = False  # send what a broken client would
    raw.conn.config.normalize_outbound_headers = False
    raw.post(f"/3/device/{token(1)}", dict([field]))
    ended = [e for e in _until_goaway(raw) if isinstance(e, ConnectionTerminated)]
    assert ended[0].error_code == ErrorCodes.PROTOCOL_ERROR
    assert sim.records == []  # never handled as a request


def test_a_malformed_stream_over_the_limit_gets_goaway_not_a_reset(sim: ApnsSimulator, raw: RawClient) -> None:
    sim.script(token(11), "bad")
    sim.script(token(20), "slow", delay=0.3)
    assert raw.response(raw.post(f"/3/device/{token(11)}"))["status"] == 400
    raw.pump_until(lambda: raw.max_streams == [1000, 1])
    raw.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 1000  # ignore the limit
    raw.conn.remote_settings.acknowledge()
    raw.conn.config.validate_outbound_headers = False
    raw.conn.config.normalize_outbound_headers = False
    raw.post(f"/3/device/{token(20)}", flush=False)
    excess = raw.post(f"/3/device/{token(21)}", {"connection": "close"})
    events = _until_goaway(raw)
    assert [e for e in events if isinstance(e, StreamReset) and e.stream_id == excess] == []
    assert [e.error_code for e in events if isinstance(e, ConnectionTerminated)] == [ErrorCodes.PROTOCOL_ERROR]
    assert sim.refused_streams == 0
