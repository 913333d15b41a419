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
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import firebase_admin
from firebase_admin import credentials, exceptions, messaging
from firebase_admin import _http_client  # noqa: PLC2701 (the documented way to pick retries)
from firebase_admin._retry import HttpxRetry
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request

from notifier.config import AppConfig, FcmApp, Settings
from notifier.errors import ConfigError
from notifier.model import Device, Notification, Platform, Priority, redact
from notifier.outcomes import CredentialFailure, DeadToken, Delivered, MessageRejected, Outcome, RetryAfter
from notifier.payload import apns_message, fcm_data
from notifier.trust import trust_extra_ca
from notifier.webpush import retry_after_seconds, topic_for

log = logging.getLogger(__name__)

# firebase-admin's cap on one send_each_async call.
MAX_BATCH = 500
# Refresh the OAuth token this long before it expires (google-auth would do it 3m45s
# before, synchronously, inside a send on the event loop).
TOKEN_MARGIN = timedelta(minutes=5)

# firebase-admin exception -> outcome kind. Ambiguous ones map to what deletes nothing.
ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (messaging.UnregisteredError, "dead"),  # 404 UNREGISTERED: the app instance is gone
    (messaging.SenderIdMismatchError, "dead"),  # 403 SENDER_ID_MISMATCH: token of another sender
    (messaging.QuotaExceededError, "retry"),  # 429 QUOTA_EXCEEDED: honour Retry-After
    (messaging.ThirdPartyAuthError, "credential"),  # 401: APNs cert / web push auth in Firebase
    (exceptions.InvalidArgumentError, "invalid"),  # 400: the token, or our message (see below)
    (exceptions.UnauthenticatedError, "credential"),  # 401: our service account
    (exceptions.PermissionDeniedError, "credential"),  # 403: the API is off for the project
    (exceptions.ResourceExhaustedError, "retry"),  # 429 without the FCM code
    (exceptions.UnavailableError, "retry"),  # 503
    (exceptions.InternalError, "retry"),  # 500
    (exceptions.DeadlineExceededError, "retry"),
    (exceptions.UnknownError, "retry"),  # a dropped connection fails all in flight
    (exceptions.NotFoundError, "rejected"),  # 404 without UNREGISTERED: not about the token
)
# INVALID_ARGUMENT is a dead token only when FCM says the registration token is invalid.
_TOKEN_INVALID = ("registration token", "not a valid fcm registration token")


class FcmChannel:
    """The five verbs for FCM."""

    def __init__(self, app: str, cfg: FcmApp, *, timeout: float, max_in_flight: int) -> None:
        self.app = app
        self._cfg = cfg
        self._timeout = timeout
        self._chunk = max(1, min(MAX_BATCH, max_in_flight))
        self._fb: firebase_admin.App | None = None
        self._svc: Any = None
        self._refresh_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"FcmChannel(app={self.app!r}, project={self._cfg.project_id!r}, credentials=<redacted>)"

    @classmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> FcmChannel:
        if app.fcm is None:
            raise ConfigError(f"app {app.name!r} has no fcm section")
        if settings.ca_bundle is not None:
            trust_extra_ca(settings.ca_bundle)
        return cls(app.name, app.fcm, timeout=settings.send_timeout, max_in_flight=settings.max_in_flight)

    def _open(self) -> Any:
        if self._svc is None:
            try:
                cred = credentials.Certificate(str(self._cfg.service_account_file))
            except (ValueError, OSError):
                raise ConfigError(f"app {self.app!r}: the FCM service-account file is not usable") from None
            options = {"projectId": self._cfg.project_id, "httpTimeout": self._timeout}
            self._fb = firebase_admin.initialize_app(cred, options, name=f"notifier-{self.app}-{uuid.uuid4().hex[:8]}")
            svc = messaging._get_messaging_service(self._fb)
            svc._async_client = _http_client.HttpxAsyncClient(
                credential=svc._credential, timeout=self._timeout, http2=True,
                retry_config=HttpxRetry(max_retries=0, status_forcelist=[]),
            )
            if self._cfg.endpoint is not None:
                base = f"{self._cfg.endpoint}/v1/projects/{self._cfg.project_id}"
                svc._fcm_url = f"{base}/messages:send"
                svc._fcm_topic_url = f"{base}/registrations"
            self._svc = svc
            self._refresh_lock = asyncio.Lock()
        return self._svc

    async def _fresh_token(self, svc: Any) -> None:
        """Fetch or refresh the OAuth token off the loop, once, ahead of its expiry."""
        cred = svc._credential
        assert self._refresh_lock is not None
        async with self._refresh_lock:
            expiry = cred.expiry.replace(tzinfo=timezone.utc) if cred.expiry else None
            if cred.token and expiry and expiry - TOKEN_MARGIN > datetime.now(timezone.utc):
                return
            await asyncio.get_running_loop().run_in_executor(None, cred.refresh, Request())

    # -- build ---------------------------------------------------------------------

    def build(self, n: Notification, device: Device | None = None, *, topic: str | None = None,
              condition: str | None = None) -> messaging.Message:
        high = n.priority is Priority.HIGH and not n.silent
        visible = None if n.silent else messaging.Notification(title=n.title, body=n.body)
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
        apns_headers = {"apns-priority": "10" if high else "5",
                        "apns-push-type": "background" if n.silent else "alert"}
        if n.collapse_key:
            apns_headers["apns-collapse-id"] = n.collapse_key
        apns = messaging.APNSConfig(headers=apns_headers, payload=messaging.APNSPayload(
            aps=_aps(aps["aps"]), **{k: v for k, v in aps.items() if k != "aps"}))
        webpush_headers = {"TTL": str(n.ttl), "Urgency": "high" if high else "normal"}
        if n.collapse_key:
            webpush_headers["Topic"] = topic_for(n.collapse_key)
        message = messaging.Message(
            data=fcm_data(n) or None, notification=visible, android=android, apns=apns,
            webpush=messaging.WebpushConfig(headers=webpush_headers), topic=topic, condition=condition,
        )
        if device is not None:
            message.token = device.token  # see the module docstring: not ``fid``
        messaging._MessagingService.encode_message(message)  # raises ValueError here, not for the batch
        return message

    # -- send ----------------------------------------------------------------------

    async def send(self, n: Notification, devices: list[Device]) -> list[Outcome]:
        try:
            svc = self._open()
            messages = [self.build(n, d) for d in devices]
        except ValueError as exc:
            return [MessageRejected(f"invalid FCM message: {exc}")] * len(devices)
        try:
            await self._fresh_token(svc)
        except RefreshError as exc:
            return [CredentialFailure(self.app, f"OAuth token refused: {exc}")] * len(devices)
        except Exception as exc:  # requests or OS errors: the token endpoint is unreachable
            return [RetryAfter(None, f"OAuth token fetch: {type(exc).__name__}")] * len(devices)
        outcomes: list[Outcome] = []
        for start in range(0, len(messages), self._chunk):
            outcomes.extend(await self._send_chunk(messages[start:start + self._chunk], devices[start:]))
        return outcomes

    async def _send_chunk(self, messages: list[messaging.Message], devices: list[Device]) -> list[Outcome]:
        try:
            async with asyncio.timeout(self._timeout * 2):
                batch = await messaging.send_each_async(messages, app=self._fb)
        except TimeoutError:
            return [RetryAfter(None, "batch timed out")] * len(messages)
        except exceptions.FirebaseError as exc:  # the whole batch failed before any answer
            return [self.classify(exc)] * len(messages)
        outcomes = []
        for resp, device in zip(batch.responses, devices):
            outcome = Delivered(200) if resp.success else self.classify(resp.exception)
            if not isinstance(outcome, Delivered):
                log.info("fcm …%s: %s", redact(device.token), outcome)
            outcomes.append(outcome)
        return outcomes

    async def send_to(self, n: Notification, *, topic: str | None = None, condition: str | None = None) -> Outcome:
        """One message to an FCM topic or condition."""
        try:
            svc = self._open()
            message = self.build(n, topic=topic, condition=condition)
            await self._fresh_token(svc)
        except ValueError as exc:
            return MessageRejected(f"invalid FCM message: {exc}")
        except RefreshError as exc:
            return CredentialFailure(self.app, f"OAuth token refused: {exc}")
        (outcome,) = await self._send_chunk([message], [Device(0, self.app, Platform.FCM, topic or condition or "")])
        return outcome

    async def manage_topic(self, topic: str, tokens: list[str], subscribe: bool) -> dict[str, int]:
        """FCM-side topic membership, 1,000 tokens a call (firebase-admin's limit).

        firebase-admin's topic API is synchronous (requests), so it runs off the loop.
        """
        self._open()
        call = messaging.subscribe_to_topic if subscribe else messaging.unsubscribe_from_topic
        counts = {"success": 0, "failure": 0}
        loop = asyncio.get_running_loop()
        for start in range(0, len(tokens), 1000):
            chunk = tokens[start:start + 1000]
            resp = await loop.run_in_executor(None, lambda c=chunk: call(c, topic, app=self._fb))
            counts["success"] += resp.success_count
            counts["failure"] += resp.failure_count
        return counts

    def classify(self, exc: Exception | None) -> Outcome:
        """A firebase-admin exception as an outcome: the ERRORS table, first match."""
        if exc is None:
            return Delivered(200)
        response = getattr(exc, "http_response", None)
        status = getattr(response, "status_code", None)
        code = getattr(exc, "code", "")
        reason = f"{status or ''} {code} {str(exc)[:200]}".strip()
        if isinstance(exc, exceptions.UnknownError) and isinstance(getattr(exc, "cause", None), RefreshError):
            return CredentialFailure(self.app, reason, status)
        kind = next((k for cls, k in ERRORS if isinstance(exc, cls)), "rejected")
        if kind == "invalid":
            kind = "dead" if any(s in str(exc).lower() for s in _TOKEN_INVALID) else "rejected"
        if kind == "dead":
            return DeadToken(reason, status)
        if kind == "retry":
            headers = getattr(response, "headers", None) or {}
            return RetryAfter(retry_after_seconds(headers.get("Retry-After")), reason, status)
        if kind == "credential":
            return CredentialFailure(self.app, reason, status)
        return MessageRejected(reason, status)

    async def close(self) -> None:
        if self._svc is not None:
            await self._svc._async_client._async_client.aclose()
            self._svc = None
        if self._fb is not None:
            # delete_app closes the messaging service with asyncio.run(), which cannot run
            # on this loop; the client is closed above, so a thread of its own is enough.
            await asyncio.get_running_loop().run_in_executor(None, firebase_admin.delete_app, self._fb)
            self._fb = None

    async def __aenter__(self) -> FcmChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
