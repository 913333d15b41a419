"""A Web Push service (RFC 8030) on https://127.0.0.1:PORT, with VAPID and RFC 8291 decryption.

What a push service does for an application server, faithfully enough that pywebpush
cannot tell the difference:

* :meth:`WebPushSimulator.subscribe` plays the browser: it mints a subscription shaped
  like ``PushSubscription.toJSON()`` — ``{"endpoint": "https://127.0.0.1:PORT/push/<id>",
  "keys": {"p256dh": ..., "auth": ...}}`` — and keeps the private key and auth secret.
* ``POST /push/<id>`` (RFC 8030 §5) is checked in this order, every request recorded:

  1. unknown ``<id>`` -> 404;
  2. VAPID (RFC 8292 §3): ``Authorization: vapid t=<jwt>, k=<key>`` (or the older
     ``WebPush <jwt>`` + ``Crypto-Key: p256ecdsa=<key>``). Missing/unparseable -> 401;
     bad ES256 signature, ``aud`` not ``https://127.0.0.1:PORT``, ``exp`` past or more
     than 24 h ahead, ``sub`` not ``mailto:``/``https:``, or ``k`` not the key the
     subscription is bound to (``vapid_public_key`` / ``application_server_key``) -> 403;
  3. headers (RFC 8030 §5.2-5.4): ``TTL`` required, an integer >= 0; ``Urgency`` one of
     very-low|low|normal|high; ``Topic`` <= 32 base64url characters; else 400;
  4. body (RFC 8030 §7.2, RFC 8291 §4): > 4096 octets -> 413; a non-empty body needs
     ``Content-Encoding: aes128gcm`` (else 415); undecryptable -> 400;
  5. the subscription's scripted behaviour (below). "live" answers 201 Created with
     ``Location: /message/<id>`` and echoes ``TTL``.

Scripted behaviours (:meth:`WebPushSimulator.script`, per subscription: its dict, endpoint
URL or id; ``times=N`` answers N times then reverts to live; rejections in steps 1-4 do not
consume a time; ``outage()`` answers every push that passes steps 1-4 with a 503 ("error",
``status=503``), ``outage(behaviour, **params)`` with any behaviour below, until
``outage(None)``):

    live          201 Created (delivered)
    gone          410 Gone (the user unsubscribed)
    not_found     404 Not Found (expired subscription)
    too_large     413 Payload Too Large
    throttle      429 Too Many Requests, Retry-After: retry_after (default 1)
    error         status (default 500; any 4xx/5xx), optional Retry-After: retry_after
    slow          waits ``delay`` seconds (default 1.0), then 201
    unauthorized  403 Forbidden (as if the subscription were bound to another VAPID key)
    hostile       status (default 500) with a body no honest service sends: ``body="nul"``
                  (NUL bytes), ``"invalid_utf8"`` or ``"huge"`` (10 MB)

Records are :class:`Push` frozen dataclasses, appended when the answer is sent (so a
"slow" push is recorded after its delay; ``received_at`` is still its arrival time).
``deliveries_by_token()`` counts the 201s per subscription id; ``delivered_count(sub)``
takes a subscription's dict, endpoint or id. The lifecycle, recorder, scripts, outage and
``wait_for`` are :mod:`simulators.base`'s; Web Push adds :meth:`WebPushSimulator.subscribe`.
Records, subscriptions and scripts survive ``stop()`` and ``restart()``.

Usage (clients must trust ``simulators.tls.ca_path()``)::

    with WebPushSimulator() as sim:
        sub = sim.subscribe()                          # pywebpush's subscription_info
        sim.script(sub, "error", status=503, times=2)  # two 503s, then 201s
        ...                                            # the code under test pushes
        sim.wait_for(lambda records: sim.delivered_count(sub) == 1)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simulators import tls
from simulators._webpush_crypto import (
    DecryptError,
    SubscriptionKeys,
    VapidError,
    VapidVerifier,
    b64url_decode,
    decrypt,
    parse_vapid_header,
)
from simulators._webpush_browser import BrowserSide
from simulators.base import Script, SimulatorBase

__all__ = ["BEHAVIOURS", "Push", "WebPushSimulator"]

log = logging.getLogger(__name__)

MAX_BODY = 4096
URGENCIES = ("very-low", "low", "normal", "high")
BEHAVIOURS = frozenset(
    {"live", "gone", "not_found", "too_large", "throttle", "error", "slow", "unauthorized", "hostile"}
)
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_TTL_RE = re.compile(r"^[0-9]+$")
_FIXED = {"gone": 410, "not_found": 404, "too_large": 413, "unauthorized": 403}
# What a hostile push service (any URL a browser hands the application server) may answer.
HOSTILE_BODIES: dict[str, bytes] = {
    "nul": b'{"message": "gone\x00 for good"}\x00',
    "invalid_utf8": b'{"message": "\xff\xfe\xc3\x28 \xed\xa0\x80"}',
    "huge": b"x" * (10 * 1024 * 1024),  # 10 MB
}
Answer = tuple[int, str, dict[str, str]]  # status (0: passed the checks), reason, headers
Target = Mapping[str, Any] | str  # a subscription's dict, endpoint URL or id


@dataclass(frozen=True, repr=False)
class Push:
    """One ``POST /push/<id>`` as received, and what the simulator answered."""

    subscription_id: str
    endpoint: str
    status: int
    payload: bytes | None  # decrypted plaintext; b"" for a bodyless push; None if not decrypted
    ttl: int | None  # None when the TTL header was missing or invalid
    urgency: str | None  # raw header values, None when absent
    topic: str | None
    vapid_key: str | None  # the k value
    vapid_claims: dict[str, Any] = field(hash=False)  # decoded even when rejected
    received_at: float  # time.monotonic() at arrival
    reason: str  # why this status ("delivered", "token expired", "scripted gone", ...)
    content_encoding: str | None
    body_length: int
    message_id: str | None  # the Location id of a 201

    def __repr__(self) -> str:  # no full endpoint ids (they are bearer capabilities)
        return (f"Push(sub={self.subscription_id[:8]}..., status={self.status}, "
                f"reason={self.reason!r}, payload={self.payload!r}, ttl={self.ttl}, "
                f"urgency={self.urgency!r}, topic={self.topic!r})")


@dataclass
class _Subscription:
    id: str
    endpoint: str
    keys: SubscriptionKeys | None  # None: a real browser's, whose keys never leave it (relayed, not read)
    server_key: bytes | None  # applicationServerKey (raw point), if bound to one


class WebPushSimulator(SimulatorBase[Push, Target]):
    """An RFC 8030 push service on 127.0.0.1 (see the module docstring)."""

    name = "Web Push"
    behaviours = BEHAVIOURS
    outage_default = ("error", {"status": 503})

    def __init__(self, port: int = 0, *, vapid_public_key: str | None = None) -> None:
        super().__init__(port)
        self._vapid_key = b64url_decode(vapid_public_key) if vapid_public_key else None
        self._subs: dict[str, _Subscription] = {}  # guarded by self._cond
        self._verifier = VapidVerifier()
        self._ssl: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self.browsers = BrowserSide(self._browser_subscription)
        self.ws_port = 0  # the WebSocket real browsers connect to (start() sets it)

    # -- SimulatorBase -----------------------------------------------------------------------
    async def _listen(self, port: int) -> int:
        if self._ssl is None:
            self._ssl = tls.server_context(alpn=["http/1.1"])
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{id}", self._handle)
        app.router.add_get("/", self.browsers.handle)  # the browsers' WebSocket (plain ws://)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=self._ssl,
                           reuse_address=True, backlog=1024)
        ws_site = web.TCPSite(runner, "127.0.0.1", self.ws_port, reuse_address=True)
        try:
            await site.start()
            await ws_site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        ports = [int(a[1]) for a in runner.addresses]
        self.ws_port = ports[1]
        return ports[0]

    @property
    def ws_url(self) -> str:
        """``dom.push.serverURL`` for a Firefox using this push service."""
        return f"ws://127.0.0.1:{self.ws_port}/"

    def _browser_subscription(self, server_key: bytes | None) -> tuple[str, str]:
        sub_id = secrets.token_urlsafe(32)
        sub = _Subscription(sub_id, f"{self.base_url}/push/{sub_id}", None, server_key)
        with self._cond:
            self._subs[sub_id] = sub
        return sub_id, sub.endpoint

    async def _close(self) -> None:
        """Close the listener and abort every open connection, in-flight pushes included
        (they are not recorded)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self.browsers.close()
        for site in runner.sites:
            await site.stop()
        # Abort rather than close: a TLS close waits for the peer's close_notify,
        # and we want the connections gone now, as if the service crashed.
        for handler in runner.server.connections if runner.server else []:
            if handler.transport is not None:
                handler.transport.abort()
        await runner.cleanup()

    def _delivery_key(self, record: Push) -> str | None:
        return record.subscription_id if record.status == 201 else None

    def _target_key(self, target: Target) -> str:
        """A subscription's id from its dict, endpoint URL or id; KeyError if unknown."""
        if isinstance(target, Mapping):
            target = str(target["endpoint"])
        sub_id = target.rsplit("/push/", 1)[1] if "/push/" in target else target
        with self._cond:
            if sub_id not in self._subs:
                raise KeyError(f"unknown subscription {sub_id[:8]}...")
        return sub_id

    def _check_script(self, behaviour: str, params: dict[str, Any]) -> None:
        if behaviour == "error" and not 400 <= int(params.get("status", 500)) <= 599:
            raise ValueError("an 'error' status must be 4xx or 5xx")

    def _summary(self, record: Push) -> object:
        return record.status, record.reason

    # -- subscriptions -----------------------------------------------------------------------
    def subscribe(self, behaviour: str = "live", *, application_server_key: str | None = None,
                  **params: Any) -> dict[str, Any]:
        """Mint a subscription like a browser's ``PushSubscription.toJSON()``.

        ``application_server_key`` (b64url) binds it to one VAPID key, as
        ``pushManager.subscribe({applicationServerKey})`` does; ``behaviour`` and
        ``params`` are passed to :meth:`script`.
        """
        if self.port == 0:
            raise RuntimeError("start() the simulator before subscribing: endpoints carry the port")
        sub_id = secrets.token_urlsafe(32)
        keys = SubscriptionKeys.generate()
        server_key = b64url_decode(application_server_key) if application_server_key else None
        sub = _Subscription(sub_id, f"{self.base_url}/push/{sub_id}", keys, server_key)
        with self._cond:
            self._subs[sub_id] = sub
        if behaviour != "live" or params:
            self.script(sub_id, behaviour, **params)
        return {"endpoint": sub.endpoint, "expirationTime": None, "keys": keys.public_json()}

    # -- the push resource ---------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        sub_id = request.match_info["id"]
        rec: dict[str, Any] = dict(
            subscription_id=sub_id, endpoint=f"{self.base_url}/push/{sub_id}", status=0,
            payload=None, ttl=None, urgency=request.headers.get("Urgency"),
            topic=request.headers.get("Topic"), vapid_key=None, vapid_claims={},
            received_at=arrived, reason="", content_encoding=request.headers.get("Content-Encoding"),
            body_length=request.content_length or 0, message_id=None,
        )
        body: bytes | None = None  # None: larger than MAX_BODY
        if request.content_length is None or request.content_length <= MAX_BODY:
            try:
                body = await request.read()
                rec["body_length"] = len(body)
            except web.HTTPRequestEntityTooLarge:
                body = None
        status, reason, headers = self._check(request, sub_id, body, rec)
        hostile: bytes | None = None
        if status == 0:
            script = self._take(sub_id)
            status, reason, headers = await self._behave(script, rec)
            if script.behaviour == "hostile":
                hostile = HOSTILE_BODIES[str(script.params.get("body", "nul"))]
        rec.update(status=status, reason=reason)
        self._record(Push(**rec))
        log.debug("push %s... -> %d %s", sub_id[:8], status, reason)
        if status == 201 and self.browsers.channel(sub_id) is not None:  # relayed to the real browser
            await self.browsers.deliver(sub_id, rec["message_id"], body or b"", "aes128gcm")
        if hostile is not None:
            return web.Response(status=status, headers=headers, body=hostile, content_type="application/json")
        if status == 201:
            return web.Response(status=201, headers=headers)
        text = json.dumps({"code": status, "message": reason})
        return web.Response(status=status, headers=headers, text=text,
                            content_type="application/json")

    def _check(self, request: web.Request, sub_id: str, body: bytes | None,
               rec: dict[str, Any]) -> Answer:
        """Steps 1-4; status 0 means the push passed them all."""
        with self._cond:
            sub = self._subs.get(sub_id)
        if sub is None:
            return 404, "unknown subscription", {}
        browser = self.browsers.channel(sub_id)
        if browser is not None and browser.unsubscribed:
            return 410, "unsubscribed by the browser", {}
        return (self._check_vapid(request, sub, rec) or _check_headers(request, rec)
                or _check_body(body, sub, rec) or (0, "", {}))

    def _check_vapid(self, request: web.Request, sub: _Subscription,
                     rec: dict[str, Any]) -> Answer | None:
        """Step 2: VAPID (RFC 8292)."""
        try:
            token, key = parse_vapid_header(request.headers.get("Authorization"),
                                            request.headers.get("Crypto-Key"))
            rec["vapid_key"] = key
            rec["vapid_claims"] = self._verifier.verify(token, key, self.base_url)
            bound = sub.server_key or self._vapid_key
            if bound is not None and b64url_decode(key) != bound:
                return 403, "VAPID key is not the subscription's applicationServerKey", {}
        except VapidError as exc:
            rec["vapid_claims"] = exc.claims
            headers = {"WWW-Authenticate": "vapid"} if exc.status == 401 else {}
            return exc.status, exc.reason, headers
        return None

    async def _behave(self, script: Script, rec: dict[str, Any]) -> Answer:
        """Step 5: the scripted answer for a valid push."""
        behaviour, params = script.behaviour, script.params
        if behaviour == "slow":
            await asyncio.sleep(float(params.get("delay", 1.0)))
        if behaviour in ("live", "slow"):
            message_id = secrets.token_urlsafe(16)
            rec["message_id"] = message_id
            return 201, "delivered", {"Location": f"/message/{message_id}", "TTL": str(rec["ttl"])}
        if behaviour in _FIXED:
            return _FIXED[behaviour], f"scripted {behaviour}", {}
        if behaviour == "throttle":
            return 429, "scripted throttle", {"Retry-After": str(params.get("retry_after", 1))}
        headers = {"Retry-After": str(params["retry_after"])} if "retry_after" in params else {}
        return int(params.get("status", 500)), f"scripted {behaviour}", headers


def _check_headers(request: web.Request, rec: dict[str, Any]) -> Answer | None:
    """Step 3: TTL, Urgency and Topic (RFC 8030 §5.2-5.4)."""
    ttl = request.headers.get("TTL")
    if ttl is None or not _TTL_RE.match(ttl.strip()):
        return 400, "TTL header missing or not an integer >= 0", {}
    rec["ttl"] = int(ttl)
    if rec["urgency"] is not None and rec["urgency"] not in URGENCIES:
        return 400, f"Urgency must be one of {URGENCIES}", {}
    if rec["topic"] is not None and not _TOPIC_RE.match(rec["topic"]):
        return 400, "Topic must be 1-32 base64url characters", {}
    return None


def _check_body(body: bytes | None, sub: _Subscription, rec: dict[str, Any]) -> Answer | None:
    """Step 4: size, encoding, decryption (RFC 8030 §7.2, RFC 8291 §4)."""
    if body is None or len(body) > MAX_BODY:
        return 413, f"body larger than {MAX_BODY} octets", {}
    if not body:
        rec["payload"] = b""
        return None
    if (rec["content_encoding"] or "").strip().lower() != "aes128gcm":
        return 415, "a payload needs Content-Encoding: aes128gcm", {}
    if sub.keys is None:  # a real browser's: it decrypts (and would drop what does not decrypt)
        return None
    try:
        rec["payload"] = decrypt(body, sub.keys)
    except DecryptError as exc:
        return 400, str(exc), {}
    return None
