"""FCM HTTP v1 through firebase-admin: ``send_each_async`` over HTTP/2, one firebase app
per app per worker process, living on the process's event loop.

Choices, each forced by how firebase-admin 7.7 behaves:
- its own retries of 500/503 (five requests per send) are switched off, so the one retry
  policy in ``workers`` (backoff, jitter, Retry-After, TTL bound) governs;
- the OAuth token is fetched off the event loop before the first batch and refreshed
  five minutes before it expires, instead of synchronously inside a send;
- messages carry ``token`` (the FCM v1 registration token our store holds), set after
  construction because the constructor marks it deprecated in favour of ``fid``,
  a Firebase installation id, which is a different identifier;
- one invalid message makes ``send_each_async`` raise ValueError for the whole batch, so
  every message is validated as it is built, and a batch-level failure is mapped to one
  outcome per device.

Known and not worked around: httpcore (under firebase-admin's httpx client) can leave a
request waiting for the server's HTTP/2 flow-control window until its timeout when many
requests' bodies wait at once. Seen against 64 KiB windows (four processes on two cores,
100 in flight each: a few requests in 10,000 in each of seven runs; none in three runs
against 1 MiB windows, which Google's front ends advertise). Such a request never
reached FCM; it comes back as RetryAfter (``DEADLINE_EXCEEDED``) and is sent again:
late, never twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import firebase_admin
from firebase_admin import (
    _http_client,
    credentials,
    exceptions,
    messaging,
)
from firebase_admin._retry import HttpxRetry
from google.auth.exceptions import RefreshError, TransportError
from google.auth.transport.requests import Request

from notifier.channel import BaseChannel, Report, TopicMembership, retry_after_seconds
from notifier.config import AppConfig, FcmApp, Settings
from notifier.errors import ConfigError
from notifier.feedback import Kind, clean_reason, outcome
from notifier.model import Device, FcmCondition, FcmTopic, Notification, Platform, ProviderTarget, redact
from notifier.outcomes import CredentialFailure, Delivered, MessageRejected, Outcome, RetryAfter, every
from notifier.payload import apns_headers, apns_message, fcm_data, urgent, webpush_headers
from notifier.trust import trust_extra_ca

log = logging.getLogger(__name__)

# Messages per send_each_async call. The library answers for a call only when its last
# request is done, so a call is small and several run at once (up to max_in_flight
# messages in all): a slow request holds up only its own call (it held up 100 before,
# and the window drained at every chunk), and a chunk past its deadline sends again only
# its own messages (100 before: under overload, most of them had been accepted).
CHUNK = 10
# A chunk's deadline, in send timeouts: its requests run at once, each bounded by one.
CHUNK_TIMEOUT_FACTOR = 1.2
# Seconds a freshly fetched OAuth token is trusted: a 401 within them is a credential fault.
FRESH_TOKEN = 60.0
# Refresh the OAuth token this long before it expires (google-auth would do it 3m45s
# before, synchronously, inside a send on the event loop).
TOKEN_MARGIN = timedelta(minutes=5)

# What we reach for inside firebase-admin, each for a reason in the module docstring;
# tests/unit/test_patched_libraries.py fails loudly when one is gone.
PRIVATE_NAMES: tuple[tuple[object, str], ...] = (
    (messaging, "_get_messaging_service"),  # the app's messaging service, to configure it
    (messaging._MessagingService, "encode_message"),  # validate a message as it is built
    (_http_client, "HttpxAsyncClient"),  # an async client with our retry config
    (_http_client, "GoogleAuthCredentialFlow"),  # its 401 refresh-and-resend, switched off
)

# firebase-admin exception -> what it means, first match. Ambiguous ones map to what
# deletes nothing.
ERRORS: tuple[tuple[type[Exception], Kind], ...] = (
    (messaging.UnregisteredError, Kind.DEAD),  # 404 UNREGISTERED: the app instance is gone
    # 403 SENDER_ID_MISMATCH: the token is another sender's, or our project is the wrong
    # one: held and alerted, never removed on this alone (feedback.py)
    (messaging.SenderIdMismatchError, Kind.MISMATCH),
    (messaging.QuotaExceededError, Kind.RETRY),  # 429 QUOTA_EXCEEDED: honour Retry-After
    (messaging.ThirdPartyAuthError, Kind.CREDENTIAL),  # 401: APNs cert / web push auth in Firebase
    (exceptions.InvalidArgumentError, Kind.REJECTED),  # 400: our message, unless it names the token
    (exceptions.UnauthenticatedError, Kind.CREDENTIAL),  # 401: our service account
    (exceptions.PermissionDeniedError, Kind.CREDENTIAL),  # 403: the API is off for the project
    (exceptions.ResourceExhaustedError, Kind.RETRY),  # 429 without the FCM code
    (exceptions.UnavailableError, Kind.RETRY),  # 503
    (exceptions.InternalError, Kind.RETRY),  # 500
    (exceptions.DeadlineExceededError, Kind.RETRY),
    (exceptions.UnknownError, Kind.RETRY),  # a dropped connection fails all in flight
    (exceptions.NotFoundError, Kind.REJECTED),  # 404 without UNREGISTERED: not about the token
)
# INVALID_ARGUMENT is a dead token only when FCM says the registration token is invalid.
_TOKEN_INVALID = ("registration token", "not a valid fcm registration token")


def kind_of(exc: Exception) -> Kind:
    """What a firebase-admin exception means: the ERRORS table, first match."""
    if isinstance(exc, exceptions.UnknownError) and isinstance(getattr(exc, "cause", None), RefreshError):
        return Kind.CREDENTIAL  # the OAuth token could not be refreshed mid-send
    kind = next((k for cls, k in ERRORS if isinstance(exc, cls)), Kind.REJECTED)
    if isinstance(exc, exceptions.InvalidArgumentError) and any(s in str(exc).lower() for s in _TOKEN_INVALID):
        return Kind.DEAD
    return kind


class FcmChannel(BaseChannel[messaging.Message, Exception | None]):
    """The five verbs for FCM, and FCM's own topics (``channel.ProviderTopics``)."""

    platform = Platform.FCM
    NETWORK_ERRORS = (TimeoutError, OSError, TransportError)

    def __init__(self, app: str, cfg: FcmApp, *, timeout: float, max_in_flight: int) -> None:
        super().__init__(app, timeout=timeout, max_in_flight=max_in_flight)
        self._cfg = cfg
        self._chunk = max(1, min(CHUNK, max_in_flight))
        self._calls = asyncio.Semaphore(max(1, max_in_flight // self._chunk))  # chunks in flight
        self._fb: firebase_admin.App | None = None
        self._svc: Any = None
        self._refresh_lock = asyncio.Lock()
        self._stale_token = False  # FCM said our OAuth token is not valid: refresh before the next batch
        self._refreshed_at = float("-inf")  # time.monotonic() of our last token refresh

    def __repr__(self) -> str:
        return f"FcmChannel(app={self.app!r}, project={self._cfg.project_id!r}, credentials=<redacted>)"

    @classmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> Self:
        if app.fcm is None:
            raise ConfigError(f"app {app.name!r} has no fcm section")
        if settings.ca_bundle is not None:
            trust_extra_ca(settings.ca_bundle)
        return cls(app.name, app.fcm, timeout=settings.send_timeout, max_in_flight=settings.max_in_flight)

    async def _open(self) -> None:
        try:
            cred = credentials.Certificate(str(self._cfg.service_account_file))
        except (ValueError, OSError):
            raise ConfigError(f"app {self.app!r}: the FCM service-account file is not usable") from None
        options = {"projectId": self._cfg.project_id, "httpTimeout": self.timeout}
        self._fb = firebase_admin.initialize_app(cred, options, name=f"notifier-{self.app}-{uuid.uuid4().hex[:8]}")
        svc = messaging._get_messaging_service(self._fb)
        svc._async_client = _http_client.HttpxAsyncClient(
            credential=svc._credential, timeout=self.timeout, http2=True,
            retry_config=HttpxRetry(max_retries=0, status_forcelist=[]),
        )
        # google-auth answers every 401 by refreshing the OAuth token and sending again,
        # twice, also for THIRD_PARTY_AUTH_ERROR (our APNs or Web Push credentials in
        # Firebase, which no OAuth token fixes): three requests and two token fetches per
        # message. We refresh ahead of expiry ourselves, and after a 401 about our own
        # token once per batch (``_stale_token``).
        svc._async_client._async_client.auth._refresh_status_codes = ()
        if self._cfg.endpoint is not None:
            base = f"{self._cfg.endpoint}/v1/projects/{self._cfg.project_id}"
            svc._fcm_url = f"{base}/messages:send"
            svc._fcm_topic_url = f"{base}/registrations"
        self._svc = svc

    async def _token_fault(self) -> Outcome | None:
        """Fetch or refresh the OAuth token off the loop, once, ahead of its expiry."""
        cred = self._svc._credential
        async with self._refresh_lock:
            expiry = cred.expiry.replace(tzinfo=UTC) if cred.expiry else None
            fresh = cred.token and expiry and expiry - TOKEN_MARGIN > datetime.now(UTC)
            if fresh and not self._stale_token:
                return None
            self._stale_token = False
            try:
                await asyncio.get_running_loop().run_in_executor(None, cred.refresh, Request())
                self._refreshed_at = time.monotonic()
            except RefreshError as exc:
                return CredentialFailure(self.app, clean_reason(f"OAuth token refused: {exc}"))
            except Exception as exc:  # requests or OS errors: the token endpoint is unreachable
                return RetryAfter(None, f"OAuth token fetch: {type(exc).__name__}")
        return None

    # -- build ---------------------------------------------------------------------

    def build(self, n: Notification, device: Device) -> messaging.Message:
        message = self._message(n)
        message.token = device.token  # see the module docstring: not ``fid``
        messaging._MessagingService.encode_message(message)  # raises ValueError here, not for the batch
        return message

    def _message(self, n: Notification, target: ProviderTarget | None = None) -> messaging.Message:
        high = urgent(n)
        android = messaging.AndroidConfig(
            priority="high" if high else "normal",
            ttl=n.ttl,
            collapse_key=n.collapse_key,
            notification=None if n.silent else messaging.AndroidNotification(
                sound=n.sound, channel_id=n.android_channel_id, tag=n.collapse_key,
                title_loc_key=n.title_loc_key, title_loc_args=list(n.title_loc_args) or None,
                body_loc_key=n.body_loc_key, body_loc_args=list(n.body_loc_args) or None,
            ),
        )
        aps = apns_message(n)
        apns = messaging.APNSConfig(headers=apns_headers(n), payload=messaging.APNSPayload(
            aps=_aps(aps["aps"]), **{k: v for k, v in aps.items() if k != "aps"}))
        return messaging.Message(
            data=fcm_data(n) or None,
            notification=None if n.silent else messaging.Notification(title=n.title, body=n.body),
            android=android,
            apns=apns,
            webpush=messaging.WebpushConfig(headers={"TTL": str(n.ttl), **webpush_headers(n)}),
            topic=target.name if isinstance(target, FcmTopic) else None,
            condition=target.expression if isinstance(target, FcmCondition) else None,
        )

    # -- send ----------------------------------------------------------------------

    async def _send_batch(self, n: Notification, devices: list[Device], report: Report) -> list[Outcome]:
        """firebase-admin sends in batches: every message built first (one invalid message
        would fail the whole batch), the token made fresh, then small chunks, several at once."""
        fault: Outcome | None
        try:
            messages = [self.build(n, d) for d in devices]
            fault = await self._token_fault()
        except ValueError as exc:
            fault = MessageRejected(clean_reason(f"invalid FCM message: {exc}"))
        if fault is not None:
            for i in range(len(devices)):
                report(i, fault)
            return every(fault, devices)
        async def run(start: int) -> list[Outcome]:
            async with self._calls:
                chunk = await self._send_chunk(messages[start:start + self._chunk])
            for i, outcome_ in enumerate(chunk, start):
                report(i, outcome_)
            return chunk

        chunks = await asyncio.gather(*(run(start) for start in range(0, len(messages), self._chunk)))
        outcomes = [outcome_ for chunk in chunks for outcome_ in chunk]
        for outcome_, device in zip(outcomes, devices, strict=True):
            if not isinstance(outcome_, Delivered):
                log.info("fcm …%s: %s %s", redact(device.token), type(outcome_).__name__,
                         getattr(outcome_, "status", None))
        return outcomes

    async def _send_chunk(self, messages: list[messaging.Message]) -> list[Outcome]:
        started = time.perf_counter()
        try:
            # the chunk's requests run at once, each bounded by httpTimeout: a chunk takes
            # one request's time, so a batch of chunks stays inside the worker's budget
            async with asyncio.timeout(self.timeout * CHUNK_TIMEOUT_FACTOR):
                batch = await messaging.send_each_async(messages, app=self._fb)
        except (TimeoutError, TransportError) as exc:
            return every(RetryAfter(None, f"network: {type(exc).__name__}"), messages)
        except exceptions.FirebaseError as exc:  # the whole batch failed before any answer
            return every(self.classify(exc), messages)
        finally:
            # the library answers for the chunk at once: each request took at most this long
            self._answered(time.perf_counter() - started, len(messages))
        errors = [resp.exception for resp in batch.responses]
        outcomes = [self.classify(e) for e in errors]
        ours = [i for i, e in enumerate(errors)
                if isinstance(e, exceptions.UnauthenticatedError) and not isinstance(e, messaging.ThirdPartyAuthError)]
        if ours and time.monotonic() - self._refreshed_at > FRESH_TOKEN:
            # FCM refused our OAuth token before we thought it expired (clock skew, early
            # revocation): refresh it and retry soon; a 401 with a fresh token is ours to fix
            self._stale_token = True
            for i in ours:
                outcomes[i] = RetryAfter(1.0, "401: our OAuth token was refused; refreshing it", 401)
        return outcomes

    async def _transmit(self, request: messaging.Message) -> Exception | None:
        try:
            batch = await messaging.send_each_async([request], app=self._fb)
        except exceptions.FirebaseError as exc:
            error: Exception = exc
            return error
        answer = batch.responses[0].exception
        return answer if isinstance(answer, Exception) else None

    async def send_to(self, n: Notification, target: ProviderTarget) -> Outcome:
        """One message to an FCM topic or condition."""
        try:
            await self._ensure_open()
            message = self._message(n, target)
            messaging._MessagingService.encode_message(message)
        except ConfigError as exc:
            return CredentialFailure(self.app, str(exc))
        except ValueError as exc:
            return MessageRejected(clean_reason(f"invalid FCM message: {exc}"))
        fault = await self._token_fault()
        if fault is not None:
            return fault
        name = target.name if isinstance(target, FcmTopic) else target.expression
        return await self._send_one(message, name)

    async def manage_topic(self, topic: str, tokens: list[str], subscribe: bool) -> TopicMembership:
        """FCM-side topic membership, 1,000 tokens a call (firebase-admin's limit).

        firebase-admin's topic API is synchronous (requests), so it runs off the loop.
        """
        await self._ensure_open()
        call = messaging.subscribe_to_topic if subscribe else messaging.unsubscribe_from_topic
        success = failure = 0
        loop = asyncio.get_running_loop()
        for start in range(0, len(tokens), 1000):
            chunk = tokens[start:start + 1000]
            resp = await loop.run_in_executor(None, functools.partial(call, chunk, topic, app=self._fb))
            success += resp.success_count
            failure += resp.failure_count
        return TopicMembership(success, failure)

    def classify(self, answer: Exception | None) -> Outcome:
        """A firebase-admin exception as an outcome (None: the message was accepted)."""
        if answer is None:
            return Delivered(200)
        response = getattr(answer, "http_response", None)
        status = getattr(response, "status_code", None)
        status = status if isinstance(status, int) else None
        code = getattr(answer, "code", "")
        reason = clean_reason(f"{status or ''} {code} {type(answer).__name__}: {answer}")
        headers = getattr(response, "headers", None) or {}
        return outcome(kind_of(answer), app=self.app, reason=reason, status=status,
                       retry_after=retry_after_seconds(headers.get("Retry-After")))

    async def _close(self) -> None:
        if self._svc is not None:
            await self._svc._async_client._async_client.aclose()
            self._svc = None
        if self._fb is not None:
            # delete_app closes the messaging service with asyncio.run(), which cannot run
            # on this loop; the client is closed above, so a thread of its own is enough.
            await asyncio.get_running_loop().run_in_executor(None, firebase_admin.delete_app, self._fb)
            self._fb = None


def _aps(raw: dict[str, Any]) -> messaging.Aps:
    alert = raw.get("alert")
    return messaging.Aps(
        alert=messaging.ApsAlert(
            title=alert.get("title"), body=alert.get("body"),
            title_loc_key=alert.get("title-loc-key"), title_loc_args=alert.get("title-loc-args"),
            loc_key=alert.get("loc-key"), loc_args=alert.get("loc-args"),
        ) if alert else None,
        badge=raw.get("badge"), sound=raw.get("sound"),
        content_available=bool(raw.get("content-available")) or None,
        mutable_content=bool(raw.get("mutable-content")) or None,
        thread_id=raw.get("thread-id"),
    )
