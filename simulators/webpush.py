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

Scripted behaviours (:meth:`WebPushSimulator.script`; ``times=N`` answers N times then
reverts to live; rejections in steps 1-4 do not consume a time):

    live          201 Created (delivered)
    gone          410 Gone (the user unsubscribed)
    not_found     404 Not Found (expired subscription)
    too_large     413 Payload Too Large
    throttle      429 Too Many Requests, Retry-After: retry_after (default 1)
    error         status (default 500; any 4xx/5xx), optional Retry-After: retry_after
    slow          waits ``delay`` seconds (default 1.0), then 201
    unauthorized  403 Forbidden (as if the subscription were bound to another VAPID key)

Records are :class:`Push` frozen dataclasses, appended when the answer is sent (so a
"slow" push is recorded after its delay; ``received_at`` is still its arrival time).

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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

log = logging.getLogger(__name__)

MAX_BODY = 4096
URGENCIES = ("very-low", "low", "normal", "high")
BEHAVIOURS = frozenset(
    {"live", "gone", "not_found", "too_large", "throttle", "error", "slow", "unauthorized"}
)
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_TTL_RE = re.compile(r"^[0-9]+$")
WAKE_INTERVAL = 0.005  # seconds between wait_for wake-ups under load
_FIXED = {"gone": 410, "not_found": 404, "too_large": 413, "unauthorized": 403}


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
    keys: SubscriptionKeys
    server_key: bytes | None  # applicationServerKey (raw point), if bound to one


@dataclass
class _Script:
    behaviour: str
    params: dict[str, Any]
    times: int | None


class RecordsView(Sequence[Push]):
    """A read-only live view of the records, handed to ``wait_for`` predicates."""

    def __init__(self, records: list[Push]) -> None:
        self._records = records

    def __getitem__(self, index: Any) -> Any:
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Push]:
        return iter(self._records)


class WebPushSimulator:
    """An RFC 8030 push service on 127.0.0.1 (see the module docstring)."""

    def __init__(self, port: int = 0, *, vapid_public_key: str | None = None) -> None:
        self.port = port
        self._vapid_key = b64url_decode(vapid_public_key) if vapid_public_key else None
        self._cond = threading.Condition()  # guards everything below (an RLock)
        self._records: list[Push] = []
        self._delivered: dict[str, int] = {}
        self._delivered_total = 0
        self._wake_pending = False
        self._last_wake = 0.0
        self._subs: dict[str, _Subscription] = {}
        self._scripts: dict[str, _Script] = {}
        self._outage: _Script | None = None
        self._verifier = VapidVerifier()
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> WebPushSimulator:
        if self._thread is not None:
            return self
        if self._ssl is None:
            self._ssl = tls.server_context(alpn=["http/1.1"])
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="webpush-sim", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        log.info("web push simulator listening on %s", self.base_url)
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{id}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self._ssl,
                           reuse_address=True, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    def stop(self) -> None:
        """Close the listener and abort every open connection, in-flight pushes included
        (they are not recorded). Records, subscriptions and scripts are kept."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        self._loop = self._thread = self._runner = None

        async def shutdown() -> None:
            if runner is not None:
                for site in runner.sites:
                    await site.stop()
                # Abort rather than close: a TLS close waits for the peer's close_notify,
                # and we want the connections gone now, as if the service crashed.
                for handler in runner.server.connections if runner.server else []:
                    if handler.transport is not None:
                        handler.transport.abort()
                await runner.cleanup()
            current = asyncio.current_task()
            leftovers = [t for t in asyncio.all_tasks() if t is not current]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._wake()  # a delayed wake-up may have died with the loop

    def restart(self) -> WebPushSimulator:
        """Stop, then listen again on the same port; subscriptions survive."""
        self.stop()
        return self.start()

    def __enter__(self) -> WebPushSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- subscriptions and scripts ---------------------------------------------------------

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

    def _resolve(self, target: Mapping[str, Any] | str) -> str:
        if isinstance(target, Mapping):
            target = str(target["endpoint"])
        sub_id = target.rsplit("/push/", 1)[1] if "/push/" in target else target
        with self._cond:
            if sub_id not in self._subs:
                raise KeyError(f"unknown subscription {sub_id[:8]}...")
        return sub_id

    def script(self, target: Mapping[str, Any] | str, behaviour: str, *,
               times: int | None = None, **params: Any) -> None:
        """Script a subscription (its dict, endpoint URL or id); see the module docstring."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; expected one of {sorted(BEHAVIOURS)}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 (or None for 'until re-scripted')")
        if behaviour == "error" and not 400 <= int(params.get("status", 500)) <= 599:
            raise ValueError("an 'error' status must be 4xx or 5xx")
        sub_id = self._resolve(target)
        with self._cond:
            if behaviour == "live" and times is None:
                self._scripts.pop(sub_id, None)
            else:
                self._scripts[sub_id] = _Script(behaviour, dict(params), times)

    def outage(self, status: int | None = 503) -> None:
        """Answer every push with ``status`` (a service-wide outage) until ``outage(None)``."""
        with self._cond:
            self._outage = None if status is None else _Script("error", {"status": status}, None)

    def _take_behaviour(self, sub_id: str) -> _Script:
        with self._cond:
            if self._outage is not None:
                return self._outage
            script = self._scripts.get(sub_id)
            if script is None:
                return _Script("live", {}, None)
            if script.times is not None:
                script.times -= 1
                if script.times <= 0:
                    del self._scripts[sub_id]
            return script

    def reset(self) -> None:
        """Forget records and scripts (every subscription is live again); keep subscriptions."""
        with self._cond:
            self._records.clear()
            self._delivered.clear()
            self._delivered_total = 0
            self._scripts.clear()
            self._outage = None

    # -- records ---------------------------------------------------------------------------

    @property
    def received(self) -> list[Push]:
        """Every request to /push/..., in order, with the status answered."""
        with self._cond:
            return list(self._records)

    def delivered(self) -> list[Push]:
        """The pushes answered 201 Created."""
        with self._cond:
            return [p for p in self._records if p.status == 201]

    def delivered_count(self, subscription: Mapping[str, Any] | str | None = None) -> int:
        """201s for one subscription (dict, endpoint or id), or in total when None. O(1)."""
        with self._cond:
            if subscription is None:
                return self._delivered_total
            return self._delivered.get(self._resolve(subscription), 0)

    def deliveries_by_subscription(self) -> dict[str, int]:
        """Subscription id -> number of 201s (a count > 1 is a duplicate delivery)."""
        with self._cond:
            return dict(self._delivered)

    def wait_for(self, predicate: Callable[[RecordsView], bool], timeout: float = 10.0) -> list[Push]:
        """Block until ``predicate(records)`` holds, return a snapshot of the records.

        ``records`` is a read-only live view, evaluated under the lock; copy it to keep it.
        Raises TimeoutError (with a summary of what arrived) after ``timeout`` seconds.
        """
        with self._cond:
            view = RecordsView(self._records)
            if self._cond.wait_for(lambda: predicate(view), timeout=timeout):
                return list(self._records)
            statuses: dict[int, int] = {}
            for push in self._records:
                statuses[push.status] = statuses.get(push.status, 0) + 1
            last = [(p.status, p.reason) for p in self._records[-3:]]
            raise TimeoutError(
                f"web push simulator: predicate still false after {timeout}s; "
                f"{len(self._records)} request(s) received, statuses {statuses}, last {last}"
            )

    def _record(self, push: Push) -> None:
        """Append a record (on the loop thread) and wake ``wait_for`` callers, at most
        once per WAKE_INTERVAL: a wake-up per push under load halves throughput."""
        with self._cond:
            self._records.append(push)
            if push.status == 201:
                self._delivered[push.subscription_id] = self._delivered.get(push.subscription_id, 0) + 1
                self._delivered_total += 1
            if self._wake_pending:
                return
            self._wake_pending = True
            delay = self._last_wake + WAKE_INTERVAL - time.monotonic()
        if delay <= 0:
            self._wake()
        else:
            asyncio.get_running_loop().call_later(delay, self._wake)

    def _wake(self) -> None:
        with self._cond:
            self._wake_pending = False
            self._last_wake = time.monotonic()
            self._cond.notify_all()

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
        if status == 0:
            script = self._take_behaviour(sub_id)
            status, reason, headers = await self._behave(script, rec)
        rec.update(status=status, reason=reason)
        self._record(Push(**rec))
        log.debug("push %s... -> %d %s", sub_id[:8], status, reason)
        if status == 201:
            return web.Response(status=201, headers=headers)
        text = json.dumps({"code": status, "message": reason})
        return web.Response(status=status, headers=headers, text=text,
                            content_type="application/json")

    def _check(self, request: web.Request, sub_id: str, body: bytes | None,
               rec: dict[str, Any]) -> tuple[int, str, dict[str, str]]:
        """Steps 1-4; status 0 means the push passed them all."""
        with self._cond:
            sub = self._subs.get(sub_id)
        if sub is None:
            return 404, "unknown subscription", {}
        # 2. VAPID
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
        # 3. headers
        ttl = request.headers.get("TTL")
        if ttl is None or not _TTL_RE.match(ttl.strip()):
            return 400, "TTL header missing or not an integer >= 0", {}
        rec["ttl"] = int(ttl)
        if rec["urgency"] is not None and rec["urgency"] not in URGENCIES:
            return 400, f"Urgency must be one of {URGENCIES}", {}
        if rec["topic"] is not None and not _TOPIC_RE.match(rec["topic"]):
            return 400, "Topic must be 1-32 base64url characters", {}
        # 4. body
        if body is None or len(body) > MAX_BODY:
            return 413, f"body larger than {MAX_BODY} octets", {}
        if not body:
            rec["payload"] = b""
            return 0, "", {}
        if (rec["content_encoding"] or "").strip().lower() != "aes128gcm":
            return 415, "a payload needs Content-Encoding: aes128gcm", {}
        try:
            rec["payload"] = decrypt(body, sub.keys)
        except DecryptError as exc:
            return 400, str(exc), {}
        return 0, "", {}

    async def _behave(self, script: _Script, rec: dict[str, Any]) -> tuple[int, str, dict[str, str]]:
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
        return int(params.get("status", 500)), "scripted error", headers
