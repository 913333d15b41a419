"""APNs through aioapns, hardened by ``apns_protocol``: token (.p8) or certificate auth.

One ``ApnsChannel`` per app per worker process; its connection pool lives on the
process's event loop. Every send is bounded by the in-flight semaphore and a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlsplit

from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import APNsBaseConnectionPool, APNsCertConnectionPool, APNsKeyConnectionPool
from aioapns.exceptions import ConnectionClosed, ConnectionError as ApnsConnectionError, MaxAttemptsExceeded
from h2.exceptions import ProtocolError as H2ProtocolError

from notifier.apns_protocol import client_ssl_context, open_tunnel, protocol_for
from notifier.config import ApnsApp, AppConfig, Settings
from notifier.errors import ConfigError
from notifier.model import Device, Notification, Priority, redact
from notifier.outcomes import CredentialFailure, DeadToken, Delivered, MessageRejected, Outcome, RetryAfter
from notifier.payload import APNS_MAX_PAYLOAD, apns_message, apns_payload

log = logging.getLogger(__name__)

HOSTS = {"production": "api.push.apple.com", "sandbox": "api.sandbox.push.apple.com"}
# Apple's advice: keep few connections open and reuse them.
CONNECTIONS_PER_PROCESS = 2


class _DropBusyPoolNoise(logging.Filter):
    """aioapns warns each time a send waits for a free stream. APNs allows one stream per
    connection after a rejected notification, so during a dead-token burst that is normal
    flow control, and one warning per waiting send would flood the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Pool is completely busy")


logging.getLogger("aioapns").addFilter(_DropBusyPoolNoise())

# reason -> outcome kind, for non-200 answers. Unlisted 400s are message faults, unlisted
# 403s credential faults, 429/5xx retried: the choice that never deletes a token.
REASONS: Mapping[str, str] = {
    "Unregistered": "dead",  # 410: the app is gone from the device; timestamp says since when
    "ExpiredToken": "dead",  # 410: the token expired
    "BadDeviceToken": "dead",  # 400: not a token of this app's environment
    "DeviceTokenNotForTopic": "dead",  # 400: the token belongs to another app (bundle id)
    "PayloadTooLarge": "rejected",  # 413: this message, not the device
    "ExpiredProviderToken": "credential",  # 403: our JWT is older than an hour
    "InvalidProviderToken": "credential",  # 403: wrong key id, team id or signature
    "MissingProviderToken": "credential",  # 403
    "BadCertificate": "credential",  # 403
    "BadCertificateEnvironment": "credential",  # 403: sandbox cert against production
    "Forbidden": "credential",  # 403
    "TooManyProviderTokenUpdates": "retry",  # 429: we refreshed the JWT too often
    "TooManyRequests": "retry",  # 429: too many pushes to one device
    "InternalServerError": "retry",  # 500
    "ServiceUnavailable": "retry",  # 503
    "Shutdown": "retry",  # 503: the server is draining this connection
}


class _PoolFixes:
    """Two fixes to aioapns's connection pool (see ``apns_protocol`` for the protocol's):

    (e) connect through our CONNECT tunnel when a proxy is configured;
    (f) ``acquire`` spins forever once every connection has been lost while sends wait
        for a free stream (its busy loop only rescans the list, never reconnects); here
        the loop opens a new connection whenever there is room for one.
    """

    proxy: tuple[str, int] | None = None
    connect_timeout: float = 10.0
    protocol_class: Any
    loop: asyncio.AbstractEventLoop
    ssl_context: Any

    async def _create_connection(self, factory: Any) -> Any:
        host, port = self.protocol_class.APNS_SERVER, self.protocol_class.APNS_PORT
        if self.proxy is None:
            coro = self.loop.create_connection(factory, host=host, port=port, ssl=self.ssl_context)
        else:
            sock = await open_tunnel(*self.proxy, host, port, self.connect_timeout)
            coro = self.loop.create_connection(factory, sock=sock, ssl=self.ssl_context, server_hostname=host)
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await coro
        return protocol

    connections: list[Any]
    max_connections: int
    _lock: asyncio.Lock

    async def acquire(self) -> Any:
        while True:
            for connection in self.connections:
                if not connection.is_busy:
                    return connection
            async with self._lock:
                if len(self.connections) < self.max_connections:
                    try:
                        connection = await self.create_connection()  # type: ignore[attr-defined]
                    except Exception as exc:  # DNS, TCP, TLS, proxy: all mean "no connection"
                        log.warning("cannot connect to APNs: %s", type(exc).__name__)
                        raise ApnsConnectionError() from None
                    self.connections.append(connection)
                    return connection
            await asyncio.sleep(0.005)  # every connection is at its stream limit


class _KeyPool(_PoolFixes, APNsKeyConnectionPool):
    pass


class _CertPool(_PoolFixes, APNsCertConnectionPool):
    pass


def _endpoint(cfg: ApnsApp) -> tuple[str, int]:
    if cfg.endpoint is None:
        return HOSTS[cfg.environment], 443
    parts = urlsplit(cfg.endpoint)
    return parts.hostname or "", parts.port or 443


class ApnsChannel:
    """The five verbs for APNs."""

    def __init__(self, app: str, cfg: ApnsApp, *, key_pem: str | None, timeout: float, max_in_flight: int,
                 ca_bundle: str | None, connections: int = CONNECTIONS_PER_PROCESS) -> None:
        self.app = app
        self._connections = connections
        self._cfg = cfg
        self._key_pem = key_pem
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._ca_bundle = ca_bundle
        self._pool: APNsBaseConnectionPool | None = None
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"ApnsChannel(app={self.app!r}, topic={self._cfg.topic!r}, key=<redacted>)"

    @classmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> ApnsChannel:
        cfg = app.apns
        if cfg is None:
            raise ConfigError(f"app {app.name!r} has no apns section")
        key_pem = None
        if cfg.key_file is not None:
            try:
                key_pem = cfg.key_file.read_text()
            except OSError:
                raise ConfigError(f"app {app.name!r}: cannot read the APNs key file") from None
        return cls(app.name, cfg, key_pem=key_pem, timeout=settings.send_timeout,
                   max_in_flight=settings.max_in_flight,
                   ca_bundle=str(settings.ca_bundle) if settings.ca_bundle else None)

    async def _open(self) -> tuple[APNsBaseConnectionPool, asyncio.Semaphore]:
        if self._pool is None or self._sem is None:
            cfg = self._cfg
            ctx = client_ssl_context(self._ca_bundle)
            common: dict[str, Any] = dict(topic=cfg.topic, max_connections=self._connections,
                                          max_connection_attempts=2, ssl_context=ctx)
            pool: _KeyPool | _CertPool
            if self._key_pem is not None:
                pool = _KeyPool(key=self._key_pem, key_id=cfg.key_id, team_id=cfg.team_id, **common)
            else:
                pool = _CertPool(cert_file=str(cfg.cert_file), **common)
            pool.protocol_class = protocol_for(*_endpoint(cfg), stream_timeout=self._timeout)
            pool.proxy = cfg.proxy
            pool.connect_timeout = self._timeout
            self._pool, self._sem = pool, asyncio.Semaphore(self._max_in_flight)
        return self._pool, self._sem

    # -- build ---------------------------------------------------------------------

    def build(self, n: Notification, device: Device) -> NotificationRequest:
        background = n.silent
        return NotificationRequest(
            device_token=device.token,
            message=apns_message(n),
            time_to_live=n.ttl,
            priority=5 if background or n.priority is Priority.NORMAL else 10,
            collapse_key=n.collapse_key,
            push_type=PushType.BACKGROUND if background else PushType.ALERT,
        )

    # -- send ----------------------------------------------------------------------

    async def send(self, n: Notification, devices: list[Device]) -> list[Outcome]:
        if len(apns_payload(n)) > APNS_MAX_PAYLOAD:
            return [MessageRejected("payload over 4096 bytes", 413)] * len(devices)
        pool, sem = await self._open()
        outcomes = list(await asyncio.gather(*(self._send_one(pool, sem, n, d) for d in devices)))
        if any(isinstance(o, CredentialFailure) for o in outcomes):
            pool.close()  # new connections sign a fresh JWT
        return outcomes

    async def _send_one(self, pool: APNsBaseConnectionPool, sem: asyncio.Semaphore, n: Notification,
                        device: Device) -> Outcome:
        request = self.build(n, device)
        async with sem:
            try:
                # On the wire, the stream timer (apns_protocol) bounds the send; waiting
                # for a free stream is bounded by the batch's budget in the worker.
                result = await pool.send_notification(request)
            except (TimeoutError, ApnsConnectionError, ConnectionClosed, MaxAttemptsExceeded, H2ProtocolError,
                    OSError) as exc:
                log.info("apns …%s: %s", redact(device.token), type(exc).__name__)
                return RetryAfter(None, f"network: {type(exc).__name__}")
        outcome = self.classify(result)
        if not isinstance(outcome, Delivered):
            log.info("apns …%s: %s %s", redact(device.token), result.status, result.description)
        return outcome

    def classify(self, result: NotificationResult) -> Outcome:
        """An APNs answer as an outcome: the REASONS table, then the status class."""
        if result.is_successful:
            return Delivered(200)
        try:
            status = int(result.status)
        except (TypeError, ValueError):
            status = None  # a reset stream
        reason = result.description or ""
        kind = REASONS.get(reason)
        if kind is None:
            if status == 403:
                kind = "credential"
            elif status is None or status == 429 or status >= 500:
                kind = "retry"
            else:
                kind = "rejected"
        text = f"{status or result.status} {reason}".strip()
        if kind == "dead":
            since = None
            if result.timestamp is not None:
                since = datetime.fromtimestamp(int(result.timestamp) / 1000, tz=timezone.utc)
            return DeadToken(text, status, since)
        if kind == "retry":
            return RetryAfter(None, text, status)
        if kind == "credential":
            return CredentialFailure(self.app, text, status)
        return MessageRejected(text, status)

    async def close(self) -> None:
        """Close every connection and wait (briefly) until they are gone."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        for _ in range(200):
            if not pool.connections:
                break
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> ApnsChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
