"""Validation at the boundary: every bad input gets a clear InvalidNotification."""

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from notifier.checks import (
    MAX_AUDIENCE,
    build_notification,
    check_app,
    check_audience,
    check_platform,
    check_token,
    notification_id,
)
from notifier.errors import InvalidNotification
from notifier.model import DEFAULT_TTL, Notification, Platform, Priority, redact
from notifier.payload import APNS_MAX_PAYLOAD, WEBPUSH_MAX_PLAINTEXT, check_fits, webpush_payload


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def subscription(**overrides: object) -> dict:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    sub = {"endpoint": "https://push.example.com/sub/abc", "keys": {"p256dh": b64(raw), "auth": b64(b"0" * 16)}}
    sub.update(overrides)
    return sub


def test_defaults_and_roundtrip() -> None:
    n = build_notification(title="Hi", data={"k": [1, 2]})
    assert n.ttl == DEFAULT_TTL and n.priority is Priority.HIGH
    assert Notification.from_json(json.loads(json.dumps(n.to_json()))) == n


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "needs a title or a body"),
        ({"title": "x", "silent": True}, "data-only"),
        ({"title": "x", "data": {"t": object()}}, "JSON-serialisable"),
        ({"title": "x", "data": {1: "a"}}, "string keys"),
        ({"title": "x", "data": {"f": float("nan")}}, "JSON-serialisable"),
        ({"title": "x", "ttl": -1}, "ttl"),
        ({"title": "x", "ttl": 10**9}, "ttl"),
        ({"title": "x", "ttl": True}, "ttl"),
        ({"title": "x", "badge": -3}, "badge"),
        ({"title": "x", "priority": "urgent"}, "priority"),
        ({"title": "x", "collapse_key": "k" * 65}, "collapse_key"),
        ({"title": ""}, "title"),
        ({"title": "x", "silent": "yes"}, "silent"),
    ],
)
def test_bad_notification_fields(fields: dict, message: str) -> None:
    with pytest.raises(InvalidNotification, match=message):
        build_notification(**fields)


def test_silent_data_only_is_fine() -> None:
    assert build_notification(silent=True, data={"sync": "1"}).silent


def test_audience() -> None:
    assert check_audience("u1") == ["u1"]
    assert check_audience(["a", "b", "a"]) == ["a", "b"]
    for bad in ([], "", [""], [None], 7, b"u", ["x" * 256]):
        with pytest.raises(InvalidNotification):
            check_audience(bad)
    with pytest.raises(InvalidNotification, match="at most"):
        check_audience([f"u{i}" for i in range(MAX_AUDIENCE + 1)])


def test_app_and_platform() -> None:
    assert check_app("shop-1") == "shop-1"
    for bad in ("", "Shop", "a b", "-x", None, "x" * 65):
        with pytest.raises(InvalidNotification):
            check_app(bad)
    assert check_platform("webpush") is Platform.WEBPUSH
    with pytest.raises(InvalidNotification, match="unknown platform 'gcm'"):
        check_platform("gcm")


def test_tokens() -> None:
    assert check_token(Platform.APNS, "AB" * 32).token == "ab" * 32
    with pytest.raises(InvalidNotification, match="hexadecimal"):
        check_token(Platform.APNS, "zz" * 32)
    assert check_token(Platform.FCM, "fcm-token:" + "a" * 40).token.startswith("fcm-token:")
    with pytest.raises(InvalidNotification, match="FCM"):
        check_token(Platform.FCM, "short")
    sub = subscription()
    checked = check_token(Platform.WEBPUSH, sub)
    assert (checked.token, checked.p256dh, checked.auth) == (sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"])
    assert check_token(Platform.WEBPUSH, json.dumps(sub)).token == sub["endpoint"]


@pytest.mark.parametrize(
    "sub, message",
    [
        (subscription(endpoint="http://push.example.com/x"), "https"),
        (subscription(endpoint=None), "https"),
        ({"endpoint": "https://x.example"}, "PushSubscription"),
        (subscription(keys={"p256dh": "!!", "auth": b64(b"0" * 16)}), "p256dh"),
        (subscription(keys={"p256dh": b64(b"\x04" + b"\x01" * 64), "auth": b64(b"0" * 16)}), "curve"),
        (subscription(keys={"p256dh": b64(b"\x04" * 33), "auth": b64(b"0" * 16)}), "65 bytes"),
        ("not json", "PushSubscription"),
        (subscription(endpoint="https://push.example.com:99999/x"), "valid port"),
        (subscription(endpoint="https://push.example.com:https/x"), "valid port"),
        # aiohttp and urlsplit disagree on where a backslash puts the host
        (subscription(endpoint="https://push.example.com\\@127.0.0.1/x"), "backslash"),
    ],
)
def test_bad_subscriptions(sub: object, message: str) -> None:
    with pytest.raises(InvalidNotification, match=message):
        check_token(Platform.WEBPUSH, sub)


def test_short_auth_secret() -> None:
    sub = subscription()
    sub["keys"]["auth"] = b64(b"0" * 8)
    with pytest.raises(InvalidNotification, match="16-byte"):
        check_token(Platform.WEBPUSH, sub)


def test_idempotency_key_gives_a_stable_id() -> None:
    assert notification_id("a", "k") == notification_id("a", "k")
    assert notification_id("a", "k") != notification_id("b", "k")
    assert notification_id("a", None) != notification_id("a", None)


def test_size_limits() -> None:
    fits = build_notification(title="t", data={"x": "y" * (WEBPUSH_MAX_PLAINTEXT - 100)})
    assert len(webpush_payload(fits)) <= WEBPUSH_MAX_PLAINTEXT
    check_fits(fits)
    too_big = build_notification(title="t", data={"x": "y" * APNS_MAX_PAYLOAD})
    with pytest.raises(InvalidNotification, match="limit"):
        check_fits(too_big)


def test_redact_keeps_six() -> None:
    assert redact("abcdefghij") == "efghij"


def test_unstorable_strings_are_refused() -> None:
    for bad in ({"title": "a\x00b"}, {"title": "t", "data": {"k": ["\x00"]}}, {"title": "\ud800"},
                {"title": "t", "data": {"\ud800": 1}}, {"title": "t", "body_loc_key": "k", "body_loc_args": ["\x00"]}):
        with pytest.raises(InvalidNotification):
            build_notification(**bad)
    for user in ("a\x00", "\udfff"):
        with pytest.raises(InvalidNotification):
            check_audience([user])
