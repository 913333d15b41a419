"""Web Push: the status table row by row, headers, VAPID reuse."""

import pytest
from py_vapid import Vapid02

from notifier.model import Device, Platform, build_notification
from notifier.outcomes import CredentialFailure, DeadToken, Delivered, MessageRejected, RetryAfter
from notifier.webpush import STATUS_TABLE, WebPushChannel, retry_after_seconds, topic_for


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
    assert isinstance(channel.classify(status, None), kind)


def test_every_table_entry_is_a_known_kind() -> None:
    assert set(STATUS_TABLE.values()) == {"delivered", "dead", "retry", "credential", "rejected"}


def test_retry_after(channel: WebPushChannel) -> None:
    out = channel.classify(429, "7")
    assert isinstance(out, RetryAfter) and out.seconds == 7
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None


def test_topic_header() -> None:
    assert topic_for("chat-42") == "chat-42"
    hashed = topic_for("a key with spaces and more than thirty-two characters")
    assert len(hashed) == 32 and " " not in hashed


def test_build_and_vapid_reuse(channel: WebPushChannel) -> None:
    n = build_notification(title="t", ttl=60, collapse_key="c1", priority="normal")
    d1 = Device(1, "app", Platform.WEBPUSH, "https://a.example/push/1", "p", "a")
    d2 = Device(2, "app", Platform.WEBPUSH, "https://a.example/push/2", "p", "a")
    d3 = Device(3, "app", Platform.WEBPUSH, "https://b.example/push/3", "p", "a")
    r1, r2, r3 = (channel.build(n, d) for d in (d1, d2, d3))
    assert r1.ttl == 60 and r1.headers["Urgency"] == "normal" and r1.headers["Topic"] == "c1"
    assert r1.headers["Authorization"] == r2.headers["Authorization"]  # same origin: signed once
    assert r1.headers["Authorization"] != r3.headers["Authorization"]
    assert r1.headers["Authorization"].startswith("vapid t=")
    assert "redacted" in repr(channel)
