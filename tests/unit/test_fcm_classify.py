"""FCM: the ERRORS table row by row with real firebase-admin exceptions, and build()."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import requests
from firebase_admin import _utils, exceptions, messaging
from google.auth.exceptions import RefreshError

from notifier.checks import build_notification
from notifier.config import FcmApp
from notifier.fcm import ERRORS, FcmChannel, kind_of
from notifier.feedback import FEEDBACK, Kind, TokenEffect, feedback, outcome
from notifier.model import Device, Platform
from notifier.outcomes import (
    CredentialFailure,
    DeadToken,
    Delivered,
    MessageRejected,
    RetryAfter,
    TokenMismatch,
)
from notifier.payload import urgent
from tests.unit.tables import EXPECTED, storable

APP = "shop"
FCM_URL = "https://fcm.googleapis.com/v1/projects/shop-prod/messages:send"

# What each Kind must become, written here rather than read from feedback.outcome.
# Each exception ERRORS lists, with the HTTP status FCM answers it with (None: no answer,
# the connection failed) and what the README promises for it. Independent of ERRORS: a
# wrong table entry fails.
DOCUMENTED: dict[type[Exception], tuple[int | None, str, type]] = {
    messaging.UnregisteredError: (404, "Requested entity was not found.", DeadToken),
    messaging.SenderIdMismatchError: (403, "SenderId mismatch", TokenMismatch),
    messaging.QuotaExceededError: (429, "Quota exceeded for quota metric 'Send requests'", RetryAfter),
    messaging.ThirdPartyAuthError: (401, "Auth error from APNS or Web Push Service", CredentialFailure),
    exceptions.InvalidArgumentError: (400, "Request contains an invalid argument.", MessageRejected),
    exceptions.UnauthenticatedError: (401, "Request had invalid authentication credentials.", CredentialFailure),
    exceptions.PermissionDeniedError: (403, "Firebase Cloud Messaging API has not been used in project",
                                       CredentialFailure),
    exceptions.ResourceExhaustedError: (429, "Resource has been exhausted", RetryAfter),
    exceptions.UnavailableError: (503, "The service is currently unavailable.", RetryAfter),
    exceptions.InternalError: (500, "Internal error encountered.", RetryAfter),
    exceptions.DeadlineExceededError: (None, "Timed out while making an API call", RetryAfter),
    exceptions.UnknownError: (None, "Unknown error while making remote service calls: connection lost", RetryAfter),
    exceptions.NotFoundError: (404, "Method not found.", MessageRejected),
}


@pytest.fixture
def channel() -> FcmChannel:
    # Never opened: the service-account file is not read, no firebase app exists.
    return FcmChannel(APP, FcmApp(Path("/nonexistent/service-account.json"), "shop-prod"), timeout=5,
                      max_in_flight=10)


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", FCM_URL))


def _error(cls: type[exceptions.FirebaseError], message: str, status: int | None,
           headers: dict[str, str] | None = None, cause: Exception | None = None) -> exceptions.FirebaseError:
    response = _response(status, headers) if status is not None else None
    return cls(message, cause=cause, http_response=response)  # type: ignore[call-arg]


# -- the mappings the table relies on ----------------------------------------------


@pytest.mark.parametrize("kind", sorted({k for _, k in ERRORS}, key=lambda k: k.value))
def test_every_kind_in_errors_has_feedback(kind: Kind) -> None:
    out = outcome(kind, app=APP, reason="r")
    assert type(out) in FEEDBACK
    assert type(out) is EXPECTED[kind]


def test_every_listed_exception_is_documented_here() -> None:
    assert [cls for cls, _ in ERRORS] == list(dict.fromkeys(cls for cls, _ in ERRORS))  # no duplicates
    assert {cls for cls, _ in ERRORS} == set(DOCUMENTED)


def test_every_row_is_reachable() -> None:
    """First match wins: a row after one of its base classes would never be used."""
    for i, (cls, _) in enumerate(ERRORS):
        shadowing = [earlier for earlier, _ in ERRORS[:i] if issubclass(cls, earlier)]
        assert not shadowing, f"{cls.__name__} is shadowed by {shadowing}"


# -- ERRORS, row by row --------------------------------------------------------------


@pytest.mark.parametrize("cls, kind", ERRORS, ids=[cls.__name__ for cls, _ in ERRORS])
def test_errors_row(channel: FcmChannel, cls: type[exceptions.FirebaseError], kind: Kind) -> None:
    status, message, documented = DOCUMENTED[cls]
    assert EXPECTED[kind] is documented, f"ERRORS says {cls.__name__} is {kind}, documented as {documented}"
    exc = _error(cls, message, status)
    assert kind_of(exc) is kind
    out = channel.classify(exc)
    assert type(out) is EXPECTED[kind]
    assert out.status == status
    assert cls.__name__ in out.reason and exc.code in out.reason
    storable(out.reason)
    if isinstance(out, TokenMismatch | CredentialFailure):
        assert out.app == APP
    if isinstance(out, RetryAfter):
        assert out.seconds is None  # no Retry-After header: our backoff decides
    if isinstance(out, DeadToken):
        assert out.since is None


# -- the rows with more than a class --------------------------------------------------


@pytest.mark.parametrize("message", [
    "The registration token is not a valid FCM registration token",
    "Invalid registration token provided. Make sure it matches the registration token the client app receives",
])
def test_invalid_argument_naming_the_token_is_a_dead_token(channel: FcmChannel, message: str) -> None:
    out = channel.classify(_error(exceptions.InvalidArgumentError, message, 400))
    assert isinstance(out, DeadToken)
    assert out.status == 400 and "INVALID_ARGUMENT" in out.reason
    assert feedback(out).token is TokenEffect.DEAD


@pytest.mark.parametrize("message", [
    "Request contains an invalid argument.",
    "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), \"-1s\"",
    "Message.data must not contain reserved keys",
])
def test_invalid_argument_about_the_message_keeps_the_token(channel: FcmChannel, message: str) -> None:
    out = channel.classify(_error(exceptions.InvalidArgumentError, message, 400))
    assert isinstance(out, MessageRejected)
    assert feedback(out).token is TokenEffect.KEEP


def test_sender_id_mismatch_is_held_not_dead(channel: FcmChannel) -> None:
    out = channel.classify(_error(messaging.SenderIdMismatchError, "SenderId mismatch", 403))
    assert isinstance(out, TokenMismatch)
    assert out.app == APP and out.status == 403
    fb = feedback(out)
    assert fb.token is TokenEffect.HOLD and fb.alert and not fb.retry


def _requests_response(status: int, headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    return response


@pytest.mark.parametrize("make", [_response, _requests_response], ids=["httpx", "requests"])
@pytest.mark.parametrize("header", ["Retry-After", "retry-after"])
def test_quota_exceeded_honours_retry_after(channel: FcmChannel, make: object, header: str) -> None:
    response = make(429, {header: "7"})  # type: ignore[operator]
    exc = messaging.QuotaExceededError("Quota exceeded", http_response=response)
    out = channel.classify(exc)
    assert isinstance(out, RetryAfter)
    assert out.seconds == 7 and out.status == 429


def test_a_failed_oauth_refresh_is_a_credential_failure(channel: FcmChannel) -> None:
    """send_each_async wraps what escapes a send (a RefreshError from the auth flow) in UnknownError."""
    cause = RefreshError("invalid_grant: Invalid JWT Signature.", {"error": "invalid_grant"})
    exc = exceptions.UnknownError(f"Unknown error while making remote service calls: {cause}", cause=cause)
    out = channel.classify(exc)
    assert isinstance(out, CredentialFailure)
    assert out.app == APP
    assert feedback(out).alert


def test_an_unknown_error_with_another_cause_is_retried(channel: FcmChannel) -> None:
    cause = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    exc = exceptions.UnknownError(f"Unknown error while making a remote service call: {cause}", cause=cause)
    assert isinstance(channel.classify(exc), RetryAfter)


def test_none_is_delivered(channel: FcmChannel) -> None:
    assert channel.classify(None) == Delivered(200)


@pytest.mark.parametrize("cls", [
    exceptions.FailedPreconditionError, exceptions.OutOfRangeError, exceptions.ConflictError,
    exceptions.AbortedError, exceptions.AlreadyExistsError, exceptions.CancelledError, exceptions.DataLossError,
])
def test_an_unlisted_firebase_error_is_a_message_fault(channel: FcmChannel, cls: type) -> None:
    assert not any(issubclass(cls, listed) for listed, _ in ERRORS)
    out = channel.classify(_error(cls, "something new", 400))
    assert isinstance(out, MessageRejected)
    assert out.status == 400


@pytest.mark.parametrize("message", ["Bad\x00request\x00", "x" * 10_000, "\ud800" * 300 + "\x00" * 300,
                                     "registration\x00token " * 1_000])
def test_any_message_becomes_a_storable_reason(channel: FcmChannel, message: str) -> None:
    out = channel.classify(_error(exceptions.InternalError, message, 500))
    assert isinstance(out, RetryAfter)
    assert out.reason.startswith("500 INTERNAL InternalError")
    storable(out.reason)


# -- answers as firebase-admin itself turns FCM's error bodies into exceptions -----------


def _fcm_answer(status: int, grpc: str, message: str, fcm_code: str | None,
                headers: dict[str, str] | None = None) -> exceptions.FirebaseError:
    body: dict[str, object] = {"code": status, "message": message, "status": grpc}
    if fcm_code:
        body["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}]
    request = httpx.Request("POST", FCM_URL)
    response = httpx.Response(status, headers=headers, json={"error": body}, request=request)
    error = httpx.HTTPStatusError(f"{status}", request=request, response=response)
    return _utils.handle_platform_error_from_httpx(error, messaging._MessagingService._build_fcm_error_httpx)


@pytest.mark.parametrize("status, grpc, message, fcm_code, kind", [
    (404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED", DeadToken),
    (400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", "INVALID_ARGUMENT",
     DeadToken),
    (400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT", MessageRejected),
    (403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH", TokenMismatch),
    (403, "PERMISSION_DENIED", "Firebase Cloud Messaging API has not been used", None, CredentialFailure),
    (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR",
     CredentialFailure),
    (401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", None, CredentialFailure),
    (429, "RESOURCE_EXHAUSTED", "Quota exceeded", "QUOTA_EXCEEDED", RetryAfter),
    (500, "INTERNAL", "Internal error encountered.", "INTERNAL", RetryAfter),
    (503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE", RetryAfter),
    (404, "NOT_FOUND", "Method not found.", None, MessageRejected),
])
def test_fcm_answers_through_firebase_admin(channel: FcmChannel, status: int, grpc: str, message: str,
                                             fcm_code: str | None, kind: type) -> None:
    out = channel.classify(_fcm_answer(status, grpc, message, fcm_code))
    assert type(out) is kind
    assert out.status == status


def test_quota_exceeded_through_firebase_admin_keeps_retry_after(channel: FcmChannel) -> None:
    exc = _fcm_answer(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "QUOTA_EXCEEDED", {"Retry-After": "7"})
    assert isinstance(exc, messaging.QuotaExceededError)
    out = channel.classify(exc)
    assert isinstance(out, RetryAfter) and out.seconds == 7


@pytest.mark.parametrize("error, kind", [
    (httpx.ConnectError("connection refused"), RetryAfter),
    (httpx.ReadTimeout("timed out"), RetryAfter),
    (httpx.RemoteProtocolError("Server disconnected"), RetryAfter),
])
def test_transport_failures_through_firebase_admin(channel: FcmChannel, error: httpx.HTTPError, kind: type) -> None:
    out = channel.classify(_utils.handle_platform_error_from_httpx(error))
    assert type(out) is kind
    assert out.status is None


# -- build --------------------------------------------------------------------------


def _encoded(channel: FcmChannel, **kw: object) -> dict[str, object]:
    message = channel.build(build_notification(**kw), Device(1, APP, Platform.FCM, "fcm-token-1"))
    return messaging._MessagingService.encode_message(message)


def test_a_silent_push_is_never_urgent_on_any_platform(channel: FcmChannel) -> None:
    """One rule on every channel (payload.urgent): a silent push wakes nobody."""
    assert not urgent(build_notification(silent=True, data={"sync": 1}, priority="high"))
    enc = _encoded(channel, silent=True, data={"sync": 1}, priority="high")
    assert enc["token"] == "fcm-token-1"
    assert enc["data"] == {"sync": "1"}
    assert "notification" not in enc
    assert enc["android"]["priority"] == "normal"
    assert "notification" not in enc["android"]
    assert enc["apns"]["headers"]["apns-priority"] == "5"
    assert enc["apns"]["headers"]["apns-push-type"] == "background"
    assert enc["apns"]["payload"]["aps"] == {"content-available": 1}
    assert enc["webpush"]["headers"]["Urgency"] == "normal"


def test_a_visible_high_push_is_urgent_on_every_platform(channel: FcmChannel) -> None:
    enc = _encoded(channel, title="t", body="b", ttl=60, collapse_key="order-7", priority="high")
    assert enc["notification"] == {"title": "t", "body": "b"}
    assert enc["android"]["priority"] == "high"
    assert enc["android"]["collapse_key"] == "order-7"
    assert enc["apns"]["headers"] == {"apns-priority": "10", "apns-push-type": "alert", "apns-collapse-id": "order-7"}
    assert enc["webpush"]["headers"] == {"TTL": "60", "Urgency": "high", "Topic": "order-7"}
