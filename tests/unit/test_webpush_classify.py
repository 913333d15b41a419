"""Web Push: the status table row by row, headers, VAPID reuse."""

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from notifier.channel import retry_after_seconds
from notifier.checks import build_notification
from notifier.feedback import MAX_REASON
from notifier.model import Device, Platform
from notifier.outcomes import CredentialFailure, DeadToken, Delivered, MessageRejected, RetryAfter
from notifier.payload import topic_for
from notifier.webpush import WebPushAnswer, WebPushChannel


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# A browser's subscription keys: build() encrypts for them.
P256DH = _b64(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
AUTH = _b64(os.urandom(16))


@pytest.fixture
def channel() -> WebPushChannel:
    v = Vapid02()
    v.generate_keys()
    return WebPushChannel("app", v, "mailto:ops@example.com", timeout=5, max_in_flight=10)


@pytest.mark.parametrize(
    "status, kind",
    [(201, Delivered), (202, Delivered), (404, DeadToken), (410, DeadToken), (400, MessageRejected),
     (413, MessageRejected), (401, CredentialFailure), (403, CredentialFailure), (429, RetryAfter),
     (500, RetryAfter), (503, RetryAfter), (599, RetryAfter), (418, MessageRejected)],
)
def test_classify(channel: WebPushChannel, status: int, kind: type) -> None:
    assert isinstance(channel.classify(WebPushAnswer(status)), kind)


@pytest.mark.parametrize("body", [b"gone\x00away", b"\xff\xfe\xc3(", "\ud800 lone".encode("utf-8", "surrogatepass"),
                                  b"\x1f\x8b\x08" + bytes(range(256)) * 16])
def test_any_answer_body_becomes_a_storable_reason(channel: WebPushChannel, body: bytes) -> None:
    """A push service's body is untrusted: NUL, invalid UTF-8 or binary never reach PostgreSQL."""
    out = channel.classify(WebPushAnswer(410, None, body))
    assert isinstance(out, DeadToken)
    assert out.reason.startswith("410") and len(out.reason) <= MAX_REASON
    assert "\x00" not in out.reason and out.reason.encode("utf-8")  # encodable: no lone surrogates


def test_retry_after(channel: WebPushChannel) -> None:
    out = channel.classify(WebPushAnswer(429, "7"))
    assert isinstance(out, RetryAfter) and out.seconds == 7
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("nan") is None


def test_topic_header() -> None:
    assert topic_for("chat-42") == "chat-42"
    hashed = topic_for("a key with spaces and more than thirty-two characters")
    assert len(hashed) == 32 and " " not in hashed


def test_build_and_vapid_reuse(channel: WebPushChannel) -> None:
    n = build_notification(title="t", ttl=60, collapse_key="c1", priority="normal")
    d1 = Device(1, "app", Platform.WEBPUSH, "https://a.example/push/1", P256DH, AUTH)
    d2 = Device(2, "app", Platform.WEBPUSH, "https://a.example/push/2", P256DH, AUTH)
    d3 = Device(3, "app", Platform.WEBPUSH, "https://b.example/push/3", P256DH, AUTH)
    r1, r2, r3 = (channel.build(n, d) for d in (d1, d2, d3))
    assert r1.headers["TTL"] == "60" and r1.headers["Urgency"] == "normal" and r1.headers["Topic"] == "c1"
    assert r1.headers["Authorization"] == r2.headers["Authorization"]  # same origin: signed once
    assert r1.headers["Authorization"] != r3.headers["Authorization"]
    assert r1.headers["Authorization"].startswith("vapid t=")
    assert "redacted" in repr(channel)


def test_a_silent_push_is_never_urgent(channel: WebPushChannel) -> None:
    """The same rule on every channel (payload.urgent): a silent push wakes nobody."""
    n = build_notification(silent=True, data={"sync": 1}, priority="high")
    req = channel.build(n, Device(1, "app", Platform.WEBPUSH, "https://a.example/push/1", P256DH, AUTH))
    assert req.headers["Urgency"] == "normal"


def test_a_retry_after_is_clamped_to_what_a_provider_may_hold() -> None:
    from notifier.channel import MAX_RETRY_AFTER

    for absurd in ("inf", "1e13", "1e300", "Fri, 31 Dec 9999 23:59:59 GMT"):
        assert retry_after_seconds(absurd) == MAX_RETRY_AFTER
    assert retry_after_seconds("-5") == 0.0
