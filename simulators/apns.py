"""APNs simulator: Apple's HTTP/2 provider API on 127.0.0.1, with token (JWT) auth.

Protocol (Apple developer documentation, "User Notifications"):
- "Sending notification requests to APNs": ``POST /3/device/<hex token>`` over
  HTTP/2 + TLS with ``authorization: bearer <JWT>``, ``apns-topic``, ``apns-push-type``,
  ``apns-id``, ``apns-expiration``, ``apns-priority``, ``apns-collapse-id`` and a JSON body
  (<= 4096 bytes, 5120 for VoIP).
- "Establishing a token-based connection to APNs": ES256 JWT, header ``kid``, claims
  ``iss`` (team id) and ``iat``; tokens older than an hour are rejected.
- "Handling notification responses from APNs": 200 with ``apns-id`` and no body;
  errors carry ``{"reason": ...}`` (410 adds ``"timestamp"`` in ms since the epoch).
- HTTP/2 (RFC 9113): flow control is honoured on response bodies (§6.9), received
  data is acknowledged, and SETTINGS_MAX_CONCURRENT_STREAMS (§5.1.2) is 1000, dropping
  to 1 after any rejected notification until the next success, as APNs does. A new
  limit applies once the client has ACKed it (§6.5.3); a stream opened over it is
  reset with REFUSED_STREAM (a stream error, §8.7: not processed, safe to retry),
  counted in ``refused_streams`` and recorded with status None and reason
  "REFUSED_STREAM"; the connection stays up.

Rejections (see ``_apns_wire.validate``): 405 MethodNotAllowed, 404 BadPath, 403
Missing/Invalid/ExpiredProviderToken, 400 DuplicateHeaders, BadMessageId,
MissingTopic, InvalidPushType, BadPriority, BadExpirationDate, BadCollapseId,
MissingDeviceToken, BadDeviceToken (not 64 hex digits), PayloadEmpty, 413
PayloadTooLarge.

Scripted behaviours, per device token (``script(token, behaviour, times=N, **params)``;
after N answers the token reverts to "live"; unscripted tokens are live; ``outage()``
answers every valid notification "failing" with ``status=503``, ``outage(behaviour,
**params)`` with any behaviour below, until ``outage(None)``):
    live            200, headers only
    dead            410 Unregistered + timestamp (param ``timestamp_ms``, default: now)
    bad             400 BadDeviceToken
    not_for_topic   400 DeviceTokenNotForTopic
    throttled       429 TooManyRequests
    failing         500 InternalServerError, or ``status=503`` ServiceUnavailable
    slow            200 after ``delay`` seconds (other streams are not held up)
    silent          never answers the stream
    reset           RST_STREAM (param ``code``, default INTERNAL_ERROR)
    empty_error     an error status (``status``, default 500) with NO body
    empty_data_200  200 headers, then an empty DATA frame carrying END_STREAM
Error behaviours accept ``reason=`` to override the reason string.

Usage::

    private_pem, public_pem = generate_signing_key()
    with ApnsSimulator("TEAMID1234", {"KEYID12345": public_pem}) as sim:
        sim.script(token, "dead")
        ...  # point the client at 127.0.0.1:sim.port, trusting simulators.tls.ca_path()
        sim.wait_for(lambda records: len(records) == 1)

Records are :class:`ApnsRequest`; ``deliveries_by_token()`` counts the 200s per device token.
The lifecycle, recorder, scripts, outage and ``wait_for`` are :mod:`simulators.base`'s;
APNs adds ``connections_opened``, ``refused_streams``, ``streams_open``, ``pending_bodies``
and ``max_concurrent_streams(connection_id)``.

Tokens and key material are never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from simulators import tls
from simulators._apns_server import Answer, H2ServerProtocol
from simulators._apns_wire import PATH_PREFIX, TokenVerifier, generate_signing_key, validate
from simulators.base import SimulatorBase

__all__ = ["BEHAVIOURS", "ApnsRequest", "ApnsSimulator", "generate_signing_key"]

# behaviour -> (status, reason) for the plain error answers
_ERRORS: dict[str, tuple[int, str]] = {
    "dead": (410, "Unregistered"),
    "bad": (400, "BadDeviceToken"),
    "not_for_topic": (400, "DeviceTokenNotForTopic"),
    "throttled": (429, "TooManyRequests"),
    "failing": (500, "InternalServerError"),
}
_FAILING_REASONS = {500: "InternalServerError", 503: "ServiceUnavailable"}
BEHAVIOURS = frozenset(_ERRORS) | {"live", "slow", "silent", "reset", "empty_error", "empty_data_200"}


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    """One notification request as received, with the answer the simulator chose.

    ``status`` is None when nothing is answered (behaviours "silent" and "reset", and
    behaviour "refused": a stream over SETTINGS_MAX_CONCURRENT_STREAMS, reset with
    REFUSED_STREAM unprocessed, so its ``payload`` is None and its JWT is unchecked).
    ``headers`` holds the regular (non-pseudo) request headers, lowercased, with
    ``authorization`` redacted; the verified JWT fields are kept separately.
    """

    token: str
    headers: dict[str, str]
    payload: Any
    status: int | None
    reason: str | None
    apns_id: str
    connection_id: int
    received_at: float
    behaviour: str = "live"
    path: str = ""
    jwt_kid: str | None = None
    jwt_iss: str | None = None
    jwt_iat: int | None = None


class ApnsSimulator(SimulatorBase[ApnsRequest, str]):
    """An APNs provider API on 127.0.0.1 (HTTP/2 over TLS, ALPN "h2") in a daemon thread."""

    name = "APNs"
    behaviours = BEHAVIOURS
    outage_default = ("failing", {"status": 503})

    def __init__(self, team_id: str, keys: dict[str, str], *, port: int = 0,
                 token_max_age: float = 3600.0, partial_data: bool = False) -> None:
        """``keys`` maps key id -> ES256 public key PEM. ``partial_data`` lets a response
        body be split to fit a nearly exhausted flow-control window (default: a body is
        sent whole or waits)."""
        super().__init__(port)
        self.team_id = team_id
        self.partial_data = partial_data
        self._auth = TokenVerifier(team_id, keys, token_max_age)
        self._connection_ids = itertools.count(1)
        self._connections: dict[int, H2ServerProtocol] = {}
        self._connections_opened = 0
        self._streams_open = 0
        self._refused_streams = 0
        self._server: asyncio.AbstractServer | None = None

    # -- SimulatorBase ---------------------------------------------------------------
    async def _listen(self, port: int) -> int:
        self._server = await asyncio.get_running_loop().create_server(
            self._new_connection, "127.0.0.1", port,
            ssl=tls.server_context(alpn=["h2"]), reuse_address=True, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        protocols = list(self._connections.values())
        for protocol in protocols:
            protocol.abort()
        if protocols:
            await asyncio.wait([p.closed for p in protocols], timeout=5)

    def _delivery_key(self, record: ApnsRequest) -> str | None:
        return record.token if record.status == 200 else None

    def _script_key(self, target: str) -> str:
        return target.lower()

    def _check_script(self, behaviour: str, params: dict[str, Any]) -> None:
        if behaviour == "dead" and "timestamp_ms" not in params:
            params["timestamp_ms"] = int(time.time() * 1000)

    def _summary(self, record: ApnsRequest) -> object:
        return record.token[:8], record.status, record.reason

    def _new_connection(self) -> H2ServerProtocol:
        return H2ServerProtocol(self, next(self._connection_ids))

    # -- Host interface used by H2ServerProtocol (event-loop thread) ---------------
    def connection_opened(self, protocol: H2ServerProtocol) -> None:
        """Called once TLS is up."""
        with self._cond:
            self._connections[protocol.connection_id] = protocol
            self._connections_opened += 1

    def streams_delta(self, delta: int) -> None:
        with self._cond:
            self._streams_open += delta

    def refused(self, connection_id: int, headers: list[tuple[str, str]]) -> None:
        """A stream over the concurrency limit was reset with REFUSED_STREAM."""
        path = next((v for k, v in headers if k == ":path"), "")
        regular = {k: v for k, v in headers if not k.startswith(":")}
        if "authorization" in regular:
            regular["authorization"] = "bearer <redacted>"
        token = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
        record = ApnsRequest(
            token=token, headers=regular, payload=None, status=None, reason="REFUSED_STREAM",
            apns_id=regular.get("apns-id", ""), connection_id=connection_id,
            received_at=time.time(), behaviour="refused", path=path)
        with self._cond:
            self._refused_streams += 1
        self._record(record)

    def connection_closed(self, protocol: H2ServerProtocol) -> None:
        with self._cond:
            self._connections.pop(protocol.connection_id, None)

    def handle(self, connection_id: int, method: str, path: str,
               headers: list[tuple[str, str]], body: bytes) -> Answer:
        now = time.time()
        regular = {k: v for k, v in headers if not k.startswith(":")}
        duplicated = len(regular) != sum(1 for k, _ in headers if not k.startswith(":"))
        token, rejection, claims, payload = validate(
            method, path, regular, duplicated, body, self._auth, now)
        apns_id = regular.get("apns-id") or str(uuid.uuid4()).upper()
        behaviour = "live"
        params: dict[str, Any] = {}
        status: int | None
        reason: str | None
        if rejection is not None:
            status, reason = rejection.status, rejection.reason
        else:
            script = self._take(token.lower())
            behaviour, params = script.behaviour, script.params
            status, reason = self._outcome(behaviour, params)
        if "authorization" in regular:
            regular["authorization"] = "bearer <redacted>"
        self._record(ApnsRequest(
            token=token, headers=regular, payload=payload, status=status, reason=reason,
            apns_id=apns_id, connection_id=connection_id, received_at=now,
            behaviour=behaviour, path=path,
            jwt_kid=claims.kid if claims else None, jwt_iss=claims.iss if claims else None,
            jwt_iat=claims.iat if claims else None))
        return self._answer(behaviour, params, status, reason, apns_id, now)

    @staticmethod
    def _outcome(behaviour: str, params: dict[str, Any]) -> tuple[int | None, str | None]:
        if behaviour in ("live", "slow", "empty_data_200"):
            return 200, None
        if behaviour in ("silent", "reset"):
            return None, None
        if behaviour == "failing":
            status = int(params.get("status", 500))
            return status, params.get("reason", _FAILING_REASONS.get(status, "InternalServerError"))
        if behaviour == "empty_error":
            return int(params.get("status", 500)), None
        status, reason = _ERRORS[behaviour]
        return status, params.get("reason", reason)

    @staticmethod
    def _answer(behaviour: str, params: dict[str, Any], status: int | None,
                reason: str | None, apns_id: str, now: float) -> Answer:
        if behaviour == "silent":
            return Answer("silent", apns_id=apns_id)
        if behaviour == "reset":
            return Answer("reset", apns_id=apns_id, reset_code=int(params.get("code", 2)))
        if behaviour == "empty_data_200":
            return Answer("empty_data", 200, apns_id)
        assert status is not None
        if status == 200 or reason is None:
            return Answer("respond", status, apns_id, delay=float(params.get("delay", 0.0)))
        body: dict[str, Any] = {"reason": reason}
        if status == 410:
            body["timestamp"] = int(params.get("timestamp_ms", now * 1000))
        return Answer("respond", status, apns_id, json.dumps(body, separators=(",", ":")).encode())

    # -- APNs-specific state (any thread) -------------------------------------------
    @property
    def connections_opened(self) -> int:
        return self._connections_opened

    @property
    def refused_streams(self) -> int:
        """Streams reset with REFUSED_STREAM for exceeding SETTINGS_MAX_CONCURRENT_STREAMS."""
        return self._refused_streams

    @property
    def streams_open(self) -> int:
        return self._streams_open

    @property
    def pending_bodies(self) -> int:
        """Response bodies queued because the client's flow-control window is too small."""
        with self._cond:
            return sum(len(p.pending) for p in self._connections.values())

    def max_concurrent_streams(self, connection_id: int) -> int:
        """The SETTINGS_MAX_CONCURRENT_STREAMS last advertised on a live connection."""
        with self._cond:
            return self._connections[connection_id].max_concurrent_streams
