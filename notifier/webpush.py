"""Web Push (RFC 8030): aes128gcm payloads (RFC 8291) encrypted by pywebpush, VAPID
(RFC 8292) signed by py_vapid, posted by our own aiohttp session.

One ``WebPushChannel`` per app per worker process. It keeps one aiohttp session (pooled
keep-alive connections to every push service) and signs one VAPID header per
push-service origin, reused until an hour before it expires.

Why we post ourselves instead of ``WebPusher.send_async``: pywebpush reads the whole
answer body as UTF-8 text. A push service's endpoint is any URL a browser hands us, so
its answer is untrusted input: a 10 MB or gzip-bomb body would be read whole, invalid
UTF-8 would raise out of the send. We read at most ``MAX_ANSWER`` bytes, undecompressed,
and ``feedback.clean_reason`` keeps only what PostgreSQL can store.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from py_vapid import Vapid02
from pywebpush import WebPusher

from notifier.channel import BaseChannel, retry_after_seconds
from notifier.config import AppConfig, Settings
from notifier.endpoints import EndpointPolicy, ForbiddenEndpoint, non_public
from notifier.errors import ConfigError, InvalidNotification
from notifier.feedback import Kind, clean_reason, outcome
from notifier.model import Device, Notification, Platform
from notifier.outcomes import Outcome
from notifier.payload import webpush_headers, webpush_payload

log = logging.getLogger(__name__)

# VAPID JWTs may live up to 24 h (RFC 8292 §2); we sign for 12 h and re-sign an hour early.
VAPID_LIFETIME = 12 * 3600
VAPID_MARGIN = 3600
# The most of an answer body we read: enough for any error message a service writes.
MAX_ANSWER = 4096
# The "status" of a push we refused to make (endpoints.py): a message fault, the token kept.
REFUSED = 0

# status -> what it means. Unlisted 5xx are retried, other unlisted codes are message
# faults: ambiguous codes map to the outcome that deletes nothing.
STATUS_TABLE: Mapping[int, Kind] = {
    REFUSED: Kind.REJECTED,  # we did not send: the endpoint is not one we POST to (endpoints.py)
    200: Kind.DELIVERED,
    201: Kind.DELIVERED,  # RFC 8030 §5: Created, the push service accepted the message
    202: Kind.DELIVERED,  # receipt requested; still accepted
    400: Kind.REJECTED,  # bad headers or encryption: our message, not the token
    401: Kind.CREDENTIAL,  # VAPID header missing or malformed
    403: Kind.CREDENTIAL,  # VAPID key does not match the subscription's applicationServerKey
    404: Kind.DEAD,  # subscription expired or never existed (Mozilla and FCM answer 404)
    410: Kind.DEAD,  # RFC 8030 §6.2: Gone, the user agent unsubscribed
    413: Kind.REJECTED,  # body too large
    429: Kind.RETRY,  # throttled; Retry-After tells when
    500: Kind.RETRY,
    502: Kind.RETRY,
    503: Kind.RETRY,
    504: Kind.RETRY,
}


@dataclass(frozen=True, slots=True)
class WebPushRequest:
    """What ``build`` makes for one device: where to post, the headers, the encrypted body."""

    endpoint: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class WebPushAnswer:
    status: int
    retry_after: str | None = None
    body: bytes = b""


class WebPushChannel(BaseChannel[WebPushRequest, WebPushAnswer]):
    platform = Platform.WEBPUSH
    NETWORK_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)

    def __init__(self, app: str, vapid: Vapid02, subject: str, *, timeout: float, max_in_flight: int,
                 ca_bundle: Path | None = None, policy: EndpointPolicy | None = None) -> None:
        super().__init__(app, timeout=timeout, max_in_flight=max_in_flight)
        self._policy = policy or EndpointPolicy.from_origins(())
        self._vapid = vapid
        self._subject = subject
        self._ca_bundle = ca_bundle
        self._session: aiohttp.ClientSession | None = None
        self._vapid_headers: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> Self:
        if app.webpush is None:
            raise ConfigError(f"app {app.name!r} has no webpush section")
        try:
            vapid = read_vapid_key(app.webpush.vapid_private_key_file)
        except ValueError:
            raise ConfigError(f"app {app.name!r}: cannot read the VAPID private key file") from None
        return cls(app.name, vapid, app.webpush.vapid_subject, timeout=settings.send_timeout,
                   max_in_flight=settings.max_in_flight, ca_bundle=settings.ca_bundle,
                   policy=settings.endpoint_policy)

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
            cached = (str(header), float(exp))
            self._vapid_headers[origin] = cached
        return cached[0]

    def build(self, n: Notification, device: Device) -> WebPushRequest:
        sub = {"endpoint": device.token, "keys": {"p256dh": device.p256dh, "auth": device.auth}}
        body = WebPusher(sub).encode(webpush_payload(n), "aes128gcm")["body"]
        headers = {
            **webpush_headers(n),
            "Authorization": self.vapid_header(device.token),
            "TTL": str(n.ttl),
            "Content-Encoding": "aes128gcm",
        }
        return WebPushRequest(device.token, headers, bytes(body))

    # -- send ----------------------------------------------------------------------

    async def _open(self) -> None:
        ctx = ssl.create_default_context()
        if self._ca_bundle is not None:
            ctx.load_verify_locations(cafile=str(self._ca_bundle))
        connector = aiohttp.TCPConnector(ssl=ctx, limit=self.max_in_flight, ttl_dns_cache=300,
                                         resolver=GuardedResolver(self._policy))
        # auto_decompress off: an answer body is only ever a reason, and never worth inflating
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def _transmit(self, request: WebPushRequest) -> WebPushAnswer:
        assert self._session is not None
        try:
            self._policy.check(request.endpoint)  # registered before the policy, or the policy changed
            async with self._session.post(request.endpoint, data=request.body, headers=request.headers,
                                          allow_redirects=False) as resp:
                body = await resp.content.read(MAX_ANSWER)
                return WebPushAnswer(resp.status, resp.headers.get("Retry-After"), body)
        except InvalidNotification as exc:
            return _refused(str(exc))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ForbiddenEndpoint):
                return _refused(str(exc.os_error))
            raise

    def classify(self, answer: WebPushAnswer) -> Outcome:
        """A push service's answer as an outcome: the STATUS_TABLE, then the status class."""
        status = answer.status
        kind = STATUS_TABLE.get(status, Kind.RETRY if status >= 500 else Kind.REJECTED)
        reason = clean_reason(f"{status} " + clean_reason(answer.body))
        return outcome(kind, app=self.app, reason=reason, status=status,
                       retry_after=retry_after_seconds(answer.retry_after))

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing non-public addresses for hosts not listed explicitly
    (``endpoints``): checked at send time too, because DNS can change after registration."""

    def __init__(self, policy: EndpointPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[Any]:
        infos: list[Any] = await self._inner.resolve(host, port, family)
        if self._policy.listed_explicitly(host.lower(), port):
            return infos
        public = [i for i in infos if not non_public(str(i["host"]))]
        if not public:
            raise ForbiddenEndpoint(f"{host} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


def _refused(why: str) -> WebPushAnswer:
    """We did not POST: the endpoint is not one we send to (a hostile subscription, or a
    push service's DNS now pointing inward). An operator should know: logged as an error."""
    log.error("Web Push send refused: %s", why)
    return WebPushAnswer(REFUSED, None, why.encode())


def read_vapid_key(path: Path) -> Vapid02:
    """The VAPID private key in ``path`` (PEM or base64url DER), or ValueError naming no key material.

    Not ``Vapid02.from_file``: given a missing file it generates a new key and saves it there (every
    existing subscription then answers 403), and given a bad one it logs the parse error at ERROR.
    """
    try:
        text = path.read_text()
        der = "".join(text.splitlines()[1:-1]) if "-----BEGIN" in text else text.strip()
        return Vapid02.from_der(der.encode())
    except Exception:  # py_vapid and cryptography raise assorted types; never echo key material
        raise ValueError(f"the VAPID private key in {path} does not parse") from None
