"""APNs: the REASONS table row by row, the status fallback, Apple's timestamp, build()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aioapns.common import NotificationRequest, NotificationResult, PushType

from notifier.apns import REASONS, ApnsChannel
from notifier.checks import build_notification
from notifier.config import ApnsApp
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
from tests.unit.tables import EXPECTED, storable

APP = "shop"
TOKEN = "ab" * 32

# What each Kind must become, written here rather than read from feedback.outcome.
# Apple's documented status for each reason we list, and what the README promises for it
# ("410 Unregistered, ExpiredToken and BadDeviceToken are dead tokens; DeviceTokenNotForTopic
# is held; PayloadTooLarge and other 400s message faults; 403 provider-token errors credential
# faults; 429 and 5xx retried"). Independent of REASONS: a wrong table entry fails.
APPLE: dict[str, tuple[str, type]] = {
    "Unregistered": ("410", DeadToken),
    "ExpiredToken": ("410", DeadToken),
    "BadDeviceToken": ("400", DeadToken),
    "DeviceTokenNotForTopic": ("400", TokenMismatch),
    "PayloadTooLarge": ("413", MessageRejected),
    "ExpiredProviderToken": ("403", CredentialFailure),
    "InvalidProviderToken": ("403", CredentialFailure),
    "MissingProviderToken": ("403", CredentialFailure),
    "BadCertificate": ("403", CredentialFailure),
    "BadCertificateEnvironment": ("403", CredentialFailure),
    "Forbidden": ("403", CredentialFailure),
    "TooManyProviderTokenUpdates": ("429", RetryAfter),
    "TooManyRequests": ("429", RetryAfter),
    "InternalServerError": ("500", RetryAfter),
    "ServiceUnavailable": ("503", RetryAfter),
    "Shutdown": ("503", RetryAfter),
}


@pytest.fixture
def channel() -> ApnsChannel:
    # Never opened: classify and build touch no connection.
    return ApnsChannel(APP, ApnsApp(topic="com.example.shop"), key_pem=None, timeout=5, max_in_flight=10,
                       ca_bundle=None)


def _answer(status: str, description: object = None, timestamp: object = None) -> NotificationResult:
    return NotificationResult("6c1b1f0e-0b8a-4d0e-9d53-2f2c1c1d9a11", status, description=description,
                              timestamp=timestamp)


# -- the mappings the table relies on ----------------------------------------------


@pytest.mark.parametrize("kind", sorted(set(REASONS.values()), key=lambda k: k.value))
def test_every_kind_in_reasons_has_feedback(kind: Kind) -> None:
    out = outcome(kind, app=APP, reason="r")
    assert type(out) in FEEDBACK
    assert type(out) is EXPECTED[kind]


def test_every_listed_reason_is_documented_here() -> None:
    """A new row in REASONS needs its expected outcome here too (and a removed one, removing)."""
    assert set(REASONS) == set(APPLE)


# -- REASONS, row by row -------------------------------------------------------------


@pytest.mark.parametrize("reason, kind", sorted(REASONS.items()))
def test_reasons_row(channel: ApnsChannel, reason: str, kind: Kind) -> None:
    status, documented = APPLE[reason]
    assert EXPECTED[kind] is documented, f"REASONS[{reason!r}] is {kind}, Apple's {status} {reason} is {documented}"
    out = channel.classify(_answer(status, reason))
    assert type(out) is EXPECTED[kind]
    assert out.status == int(status)
    assert out.reason == f"{status} {reason}"
    if isinstance(out, TokenMismatch | CredentialFailure):
        assert out.app == APP
    if isinstance(out, RetryAfter):
        assert out.seconds is None  # APNs sends no Retry-After: our backoff decides
    if isinstance(out, DeadToken):
        assert out.since is None  # no timestamp in this answer


# -- reasons not in the table: by status, the choice that deletes nothing ----------------


@pytest.mark.parametrize(
    "status, reason, kind",
    [
        ("403", "UnrelatedKeyIdInToken", CredentialFailure),
        ("403", "BadEnvironmentKeyInToken", CredentialFailure),
        ("403", "SomethingNew", CredentialFailure),
        ("429", "SomethingNew", RetryAfter),
        ("500", "SomethingNew", RetryAfter),
        ("502", None, RetryAfter),
        ("503", "SomethingNew", RetryAfter),
        ("400", "BadTopic", MessageRejected),
        ("400", "BadCollapseId", MessageRejected),
        ("400", "MissingTopic", MessageRejected),
        ("400", None, MessageRejected),
        ("404", "BadPath", MessageRejected),
        ("405", "MethodNotAllowed", MessageRejected),
        ("410", "SomethingNew", MessageRejected),  # gone, but not in words we know: never dead
        ("413", "SomethingNew", MessageRejected),
    ],
)
def test_unlisted_reason_by_status(channel: ApnsChannel, status: str, reason: str | None, kind: type) -> None:
    assert reason not in REASONS
    out = channel.classify(_answer(status, reason))
    assert type(out) is kind
    assert out.status == int(status)
    assert out.reason.startswith(status)
    if isinstance(out, CredentialFailure):
        assert out.app == APP


@pytest.mark.parametrize("status, description", [
    ("reset", "stream reset (ErrorCodes.REFUSED_STREAM)"),
    ("reset", None),
    ("timeout", "no answer within 10s"),
])
def test_a_reset_or_timed_out_stream_is_retried(channel: ApnsChannel, status: str, description: str | None) -> None:
    out = channel.classify(_answer(status, description))
    assert isinstance(out, RetryAfter)
    assert out.status is None and out.seconds is None
    assert out.reason.startswith(status)


def test_200_is_delivered(channel: ApnsChannel) -> None:
    assert channel.classify(_answer("200")) == Delivered(200)


# -- the verdicts with more than a class ----------------------------------------------


@pytest.mark.parametrize("timestamp, since", [
    (1700000000123, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
    (1234567890001, datetime(2009, 2, 13, 23, 31, 30, 1000, tzinfo=UTC)),
])
def test_unregistered_keeps_apples_timestamp(channel: ApnsChannel, timestamp: int, since: datetime) -> None:
    out = channel.classify(_answer("410", "Unregistered", timestamp))
    assert isinstance(out, DeadToken)
    assert out.since == since and out.since.utcoffset() == timedelta(0)
    assert feedback(out).token is TokenEffect.DEAD


@pytest.mark.parametrize("timestamp", ["soon", 10**20, float("nan"), [1]])
def test_a_garbled_timestamp_is_dropped_not_raised(channel: ApnsChannel, timestamp: object) -> None:
    out = channel.classify(_answer("410", "Unregistered", timestamp))
    assert isinstance(out, DeadToken) and out.since is None


def test_device_token_not_for_topic_is_held_not_dead(channel: ApnsChannel) -> None:
    out = channel.classify(_answer("400", "DeviceTokenNotForTopic"))
    assert isinstance(out, TokenMismatch)
    assert out.app == APP and out.status == 400
    fb = feedback(out)
    assert fb.token is TokenEffect.HOLD and fb.alert and not fb.retry


# -- what Apple (or anything at the configured endpoint) says is data --------------------


@pytest.mark.parametrize("description", [
    "Bad\x00Device\x00Token",
    "\ud800 lone surrogate",
    "x" * 10_000,
    "\ud800\x00" * 5_000,
])
def test_any_description_becomes_a_storable_reason(channel: ApnsChannel, description: str) -> None:
    out = channel.classify(_answer("400", description))
    assert isinstance(out, MessageRejected)
    assert out.reason.startswith("400")
    storable(out.reason)


@pytest.mark.parametrize("description", [42, ["Unregistered"], {"reason": "Unregistered"}, 1.5],
                         ids=["int", "list", "object", "float"])
def test_a_non_string_reason_is_classified_by_status(channel: ApnsChannel, description: object) -> None:
    """aioapns passes the JSON body's ``reason`` through as it is: a number, list or object
    must neither raise nor be read as a reason we know."""
    out = channel.classify(_answer("400", description))
    assert isinstance(out, MessageRejected)
    storable(out.reason)


# -- build --------------------------------------------------------------------------


def _device() -> Device:
    return Device(1, APP, Platform.APNS, TOKEN)


def test_a_silent_push_is_background_and_never_urgent(channel: ApnsChannel) -> None:
    n = build_notification(silent=True, data={"sync": 1}, priority="high")
    req = channel.build(n, _device())
    assert isinstance(req, NotificationRequest)
    assert req.priority == 5
    assert req.push_type is PushType.BACKGROUND
    assert req.message == {"sync": 1, "aps": {"content-available": 1}}
    assert req.collapse_key is None


@pytest.mark.parametrize("priority, apns_priority", [("high", 10), ("normal", 5)])
def test_a_visible_push_is_an_alert(channel: ApnsChannel, priority: str, apns_priority: int) -> None:
    n = build_notification(title="t", body="b", ttl=60, collapse_key="order-7", priority=priority)
    req = channel.build(n, _device())
    assert req.priority == apns_priority
    assert req.push_type is PushType.ALERT
    assert req.collapse_key == "order-7"
    assert req.time_to_live == 60
    assert req.device_token == TOKEN
    assert req.message["aps"]["alert"] == {"title": "t", "body": "b"}
