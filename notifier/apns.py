"""APNs through aioapns, hardened by ``apns_protocol``: token (.p8) or certificate auth.

One ``ApnsChannel`` per app per worker process; its connection pool lives on the
process's event loop. Every send is bounded by the in-flight limit and, on the wire, by
the stream timer of ``apns_protocol``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import urlsplit

from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import APNsBaseConnectionPool, APNsCertConnectionPool, APNsKeyConnectionPool
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from h2.exceptions import ProtocolError as H2ProtocolError

from notifier.apns_protocol import client_ssl_context, open_tunnel, protocol_for
from notifier.channel import BaseChannel, Report, _ignore
from notifier.config import ApnsApp, AppConfig, Settings
from notifier.errors import ConfigError
from notifier.feedback import Kind, clean_reason, outcome
from notifier.model import Device, Notification, Platform
from notifier.outcomes import CredentialFailure, Delivered, MessageRejected, Outcome
from notifier.payload import APNS_MAX_PAYLOAD, apns_headers, apns_message, apns_payload

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

# reason -> what it means, for non-200 answers. Unlisted 403s are credential faults,
# unlisted 429/5xx and resets retried, other unlisted codes message faults: the choice
# that never deletes a token.
REASONS: Mapping[str, Kind] = {
    "Unregistered": Kind.DEAD,  # 410: the app is gone from the device; timestamp says since when
    "ExpiredToken": Kind.DEAD,  # 410: the token expired
    "BadDeviceToken": Kind.DEAD,  # 400: not a token of this app's environment
    # 400: the token belongs to another bundle id, or our configured topic is wrong:
    # held and alerted, never removed on this alone (feedback.py)
    "DeviceTokenNotForTopic": Kind.MISMATCH,
    "PayloadTooLarge": Kind.REJECTED,  # 413: this message, not the device
    "ExpiredProviderToken": Kind.CREDENTIAL,  # 403: our JWT is older than an hour
    "InvalidProviderToken": Kind.CREDENTIAL,  # 403: wrong key id, team id or signature
    "MissingProviderToken": Kind.CREDENTIAL,  # 403
    "BadCertificate": Kind.CREDENTIAL,  # 403
    "BadCertificateEnvironment": Kind.CREDENTIAL,  # 403: sandbox cert against production
    "Forbidden": Kind.CREDENTIAL,  # 403
    "TooManyProviderTokenUpdates": Kind.RETRY,  # 429: we refreshed the JWT too often
    "TooManyRequests": Kind.RETRY,  # 429: too many pushes to one device
    "InternalServerError": Kind.RETRY,  # 500
    "ServiceUnavailable": Kind.RETRY,  # 503
    "Shutdown": Kind.RETRY,  # 503: the server is draining this connection
}


def kind_of_status(status: int | None) -> Kind:
    """An answer whose reason is not in REASONS, by its status alone."""
    if status == 403:
        return Kind.CREDENTIAL
    if status is None or status == 429 or status >= 500:
        return Kind.RETRY  # None: the stream was reset or timed out
    return Kind.REJECTED


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


class ApnsChannel(BaseChannel[NotificationRequest, NotificationResult]):
    platform = Platform.APNS
    NETWORK_ERRORS = (TimeoutError, ApnsConnectionError, ConnectionClosed, MaxAttemptsExceeded, H2ProtocolError,
                      OSError)
    # On the wire, the stream timer (apns_protocol) bounds each send; waiting for a free
    # stream (one per connection after a rejected notification) is bounded by the batch's
    # budget in the worker.
    TIMEOUT_EACH_SEND = False

    def __init__(self, app: str, cfg: ApnsApp, *, key_pem: str | None, timeout: float, max_in_flight: int,
                 ca_bundle: str | None, connections: int = CONNECTIONS_PER_PROCESS) -> None:
        super().__init__(app, timeout=timeout, max_in_flight=max_in_flight)
        self._connections = connections
        self._cfg = cfg
        self._key_pem = key_pem
        self._ca_bundle = ca_bundle
        self._pool: APNsBaseConnectionPool | None = None

    def __repr__(self) -> str:
        return f"ApnsChannel(app={self.app!r}, topic={self._cfg.topic!r}, key=<redacted>)"

    @classmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> Self:
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

    async def _open(self) -> None:
        cfg = self._cfg
        ctx = client_ssl_context(self._ca_bundle)
        common: dict[str, Any] = dict(topic=cfg.topic, max_connections=self._connections,
                                      max_connection_attempts=2, ssl_context=ctx)
        pool: _KeyPool | _CertPool
        if self._key_pem is not None:
            assert cfg.key_id is not None and cfg.team_id is not None  # config.py requires all three
            pool = _KeyPool(key=self._key_pem, key_id=cfg.key_id, team_id=cfg.team_id, **common)
        else:
            pool = _CertPool(cert_file=str(cfg.cert_file), **common)
        pool.protocol_class = protocol_for(*_endpoint(cfg), stream_timeout=self.timeout)
        pool.proxy = cfg.proxy
        pool.connect_timeout = self.timeout
        self._pool = pool

    # -- build ---------------------------------------------------------------------

    def build(self, n: Notification, device: Device) -> NotificationRequest:
        headers = apns_headers(n)
        return NotificationRequest(
            device_token=device.token,
            message=apns_message(n),
            time_to_live=n.ttl,
            priority=int(headers["apns-priority"]),
            collapse_key=headers.get("apns-collapse-id"),
            push_type=PushType(headers["apns-push-type"]),
        )

    # -- send ----------------------------------------------------------------------

    def reject(self, n: Notification) -> Outcome | None:
        if len(apns_payload(n)) > APNS_MAX_PAYLOAD:
            return MessageRejected("payload over 4096 bytes", 413)
        return None

    async def send(self, n: Notification, devices: list[Device], report: Report = _ignore) -> list[Outcome]:
        outcomes = await super().send(n, devices, report)
        if self._pool is not None and any(isinstance(o, CredentialFailure) for o in outcomes):
            self._pool.close()  # new connections sign a fresh JWT
        return outcomes

    async def _transmit(self, request: NotificationRequest) -> NotificationResult:
        assert self._pool is not None
        return await self._pool.send_notification(request)

    def classify(self, answer: NotificationResult) -> Outcome:
        """An APNs answer as an outcome: the REASONS table, then the status class."""
        if answer.is_successful:
            return Delivered(200)
        try:
            status: int | None = int(answer.status)
        except (TypeError, ValueError):
            status = None  # a reset stream
        # aioapns copies the body's "reason" whatever its JSON type: only a string is a reason
        description = clean_reason(answer.description) if isinstance(answer.description, str) else ""
        kind = REASONS.get(description) or kind_of_status(status)
        since = None
        if kind is Kind.DEAD and answer.timestamp is not None:
            try:
                since = datetime.fromtimestamp(int(answer.timestamp) / 1000, tz=UTC)
            except (TypeError, ValueError, OverflowError, OSError):
                since = None
        reason = clean_reason(f"{status or answer.status} {description}")
        return outcome(kind, app=self.app, reason=reason, status=status, since=since)

    async def _close(self) -> None:
        """Close every connection and wait (briefly) until they are gone."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        for _ in range(200):
            if not pool.connections:
                break
            await asyncio.sleep(0.01)
