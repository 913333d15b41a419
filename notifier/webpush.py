"""Web Push (RFC 8030) through pywebpush: aes128gcm payloads (RFC 8291), VAPID (RFC 8292).

One ``WebPushChannel`` per app per worker process. It keeps one aiohttp session (pooled
keep-alive connections to every push service), signs one VAPID header per push-service
origin and reuses it until an hour before it expires, and bounds every request by a
semaphore and a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import aiohttp
from py_vapid import Vapid02
from pywebpush import WebPusher

from notifier.config import AppConfig, Settings
from notifier.errors import ConfigError
from notifier.model import Device, Notification, Priority, redact
from notifier.outcomes import CredentialFailure, DeadToken, Delivered, MessageRejected, Outcome, RetryAfter
from notifier.payload import webpush_payload

log = logging.getLogger(__name__)

# VAPID JWTs may live up to 24 h (RFC 8292 §2); we sign for 12 h and re-sign an hour early.
VAPID_LIFETIME = 12 * 3600
VAPID_MARGIN = 3600
# Push services refuse a body over 4096 bytes (RFC 8030 §7.2).
MAX_BODY = 4096
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

# status -> what it means for the device. Anything not listed is a message fault.
# Ambiguous codes map to the outcome that deletes nothing.
STATUS_TABLE: Mapping[int, str] = {
    200: "delivered",
    201: "delivered",  # RFC 8030 §5: Created, the push service accepted the message
    202: "delivered",  # receipt requested; still accepted
    400: "rejected",  # bad headers or encryption: our message, not the token
    401: "credential",  # VAPID header missing or malformed
    403: "credential",  # VAPID key does not match the subscription's applicationServerKey
    404: "dead",  # subscription expired or never existed (Mozilla and FCM answer 404)
    410: "dead",  # RFC 8030 §6.2: Gone, the user agent unsubscribed
    413: "rejected",  # body too large
    429: "retry",  # throttled; Retry-After tells when
    500: "retry",
    502: "retry",
    503: "retry",
    504: "retry",
}


@dataclass(frozen=True, slots=True)
class WebPushRequest:
    """What ``build`` makes for one device: the subscription and the headers."""

    subscription: dict[str, object]
    headers: dict[str, str]
    ttl: int


def topic_for(collapse_key: str) -> str:
    """A Topic header value (<= 32 base64url characters) for a collapse key."""
    if _TOPIC_RE.match(collapse_key):
        return collapse_key
    digest = hashlib.sha256(collapse_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:32]


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class WebPushChannel:
    """The five verbs for Web Push."""

    def __init__(
        self,
        app: str,
        vapid: Vapid02,
        subject: str,
        *,
        timeout: float,
        max_in_flight: int,
        ca_bundle: Path | None = None,
    ) -> None:
        self.app = app
        self._vapid = vapid
        self._subject = subject
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._ca_bundle = ca_bundle
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._vapid_headers: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"WebPushChannel(app={self.app!r}, vapid=<redacted>)"

    @classmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> WebPushChannel:
        if app.webpush is None:
            raise ConfigError(f"app {app.name!r} has no webpush section")
        try:
            vapid = Vapid02.from_file(str(app.webpush.vapid_private_key_file))
        except Exception:  # py_vapid raises bare Exceptions; never echo key material
            raise ConfigError(f"app {app.name!r}: cannot read the VAPID private key file") from None
        return cls(
            app.name,
            vapid,
            app.webpush.vapid_subject,
            timeout=settings.send_timeout,
            max_in_flight=settings.max_in_flight,
            ca_bundle=settings.ca_bundle,
        )

    # -- build ---------------------------------------------------------------------

    def vapid_header(self, endpoint: str) -> str:
        """The Authorization header for an endpoint's origin, signed once per lifetime."""
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        now = time.time()
        cached = self._vapid_headers.get(origin)
        if cached is None or cached[1] - VAPID_MARGIN <= now:
            exp = int(now) + VAPID_LIFETIME
            # a fresh dict each time: py_vapid and pywebpush mutate the claims they get
            header = self._vapid.sign({"sub": self._subject, "aud": origin, "exp": exp})["Authorization"]
            cached = (header, float(exp))
            self._vapid_headers[origin] = cached
        return cached[0]

    def build(self, n: Notification, device: Device) -> WebPushRequest:
        headers = {
            "Authorization": self.vapid_header(device.token),
            "Urgency": "high" if n.priority is Priority.HIGH else "normal",
        }
        if n.collapse_key:
            headers["Topic"] = topic_for(n.collapse_key)
        sub = {"endpoint": device.token, "keys": {"p256dh": device.p256dh, "auth": device.auth}}
        return WebPushRequest(sub, headers, n.ttl)

    # -- send ----------------------------------------------------------------------

    async def _open(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._sem is None:
            ctx = ssl.create_default_context()
            if self._ca_bundle is not None:
                ctx.load_verify_locations(cafile=str(self._ca_bundle))
            connector = aiohttp.TCPConnector(ssl=ctx, limit=self._max_in_flight, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
            self._sem = asyncio.Semaphore(self._max_in_flight)
        return self._session, self._sem

    async def send(self, n: Notification, devices: list[Device]) -> list[Outcome]:
        """One outcome per device, same order. Never raises for a provider's answer."""
        session, sem = await self._open()
        body = webpush_payload(n)
        return list(await asyncio.gather(*(self._send_one(session, sem, body, n, d) for d in devices)))

    async def _send_one(
        self, session: aiohttp.ClientSession, sem: asyncio.Semaphore, body: bytes, n: Notification, device: Device
    ) -> Outcome:
        req = self.build(n, device)
        async with sem:
            try:
                async with asyncio.timeout(self._timeout):
                    pusher = WebPusher(req.subscription, aiohttp_session=session)
                    resp = await pusher.send_async(
                        body,
                        headers=dict(req.headers),
                        ttl=req.ttl,
                        content_encoding="aes128gcm",
                        timeout=aiohttp.ClientTimeout(total=self._timeout),
                    )
                    text = await resp.text()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.info("webpush …%s: %s", redact(device.token), type(exc).__name__)
                return RetryAfter(None, f"network: {type(exc).__name__}")
        outcome = self.classify(resp.status, resp.headers.get("Retry-After"), text)
        if not isinstance(outcome, Delivered):
            log.info("webpush …%s: %s %s", redact(device.token), resp.status, type(outcome).__name__)
        return outcome

    def classify(self, status: int, retry_after: str | None, text: str = "") -> Outcome:
        """A push service's answer as an outcome."""
        kind = STATUS_TABLE.get(status, "retry" if status >= 500 else "rejected")
        reason = f"{status} {text.strip()[:200]}".strip()
        if kind == "delivered":
            return Delivered(status)
        if kind == "dead":
            return DeadToken(reason, status)
        if kind == "retry":
            return RetryAfter(retry_after_seconds(retry_after), reason, status)
        if kind == "credential":
            return CredentialFailure(self.app, reason, status)
        return MessageRejected(reason, status)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> WebPushChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
