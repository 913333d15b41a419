"""Each provider's message body for a notification, and the size check done at notify() time.

Pure functions. A channel's ``build`` wraps these with the per-device parts (headers, token).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from notifier.errors import InvalidNotification
from notifier.model import Notification, Platform

# RFC 8291 aes128gcm in one record: 86-byte header (salt, rs, keyid = sender's 65-byte
# key), 1 padding delimiter, 16-byte tag. Push services refuse bodies over 4096 bytes.
WEBPUSH_MAX_PLAINTEXT = 4096 - 103
# APNs refuses a JSON payload over 4 KB (413 PayloadTooLarge).
APNS_MAX_PAYLOAD = 4096


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def webpush_payload(n: Notification) -> bytes:
    """The plaintext a service worker receives in ``event.data.json()``."""
    msg: dict[str, Any] = {}
    for key in ("title", "body", "badge", "sound"):
        value = getattr(n, key)
        if value is not None:
            msg[key] = value
    if n.silent:
        msg["silent"] = True
    if n.data:
        msg["data"] = dict(n.data)
    return _dumps(msg)


def apns_message(n: Notification) -> dict[str, Any]:
    """Apple's JSON: the ``aps`` dictionary plus custom data at the top level."""
    aps: dict[str, Any] = {}
    if n.silent:
        aps["content-available"] = 1
    else:
        alert = {
            "title": n.title,
            "body": n.body,
            "title-loc-key": n.title_loc_key,
            "title-loc-args": list(n.title_loc_args) or None,
            "loc-key": n.body_loc_key,
            "loc-args": list(n.body_loc_args) or None,
        }
        aps["alert"] = {k: v for k, v in alert.items() if v is not None}
    if n.badge is not None:
        aps["badge"] = n.badge
    if n.sound is not None:
        aps["sound"] = n.sound
    if n.mutable_content:
        aps["mutable-content"] = 1
    if n.thread_id is not None:
        aps["thread-id"] = n.thread_id
    return {**dict(n.data), "aps": aps}


def apns_payload(n: Notification) -> bytes:
    return _dumps(apns_message(n))


# FCM refuses a message whose data (keys and values) exceeds 4 KB.
FCM_MAX_DATA = 4096


def fcm_data(n: Notification) -> dict[str, str]:
    """FCM data values are strings: non-string values travel JSON-encoded."""
    return {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in n.data.items()}


def fcm_data_bytes(n: Notification) -> bytes:
    return b"".join(k.encode() + v.encode() for k, v in fcm_data(n).items())


# platform -> (builder, the largest body that provider accepts)
LIMITS: dict[Platform, tuple[Callable[[Notification], bytes], int]] = {
    Platform.WEBPUSH: (webpush_payload, WEBPUSH_MAX_PLAINTEXT),
    Platform.APNS: (apns_payload, APNS_MAX_PAYLOAD),
    Platform.FCM: (fcm_data_bytes, FCM_MAX_DATA),
}


def check_fits(n: Notification) -> None:
    """Refuse a notification that no device of some platform could ever receive.

    The audience's platforms are unknown at notify() time, so every channel must fit.
    """
    for platform, (build, limit) in LIMITS.items():
        size = len(build(n))
        if size > limit:
            raise InvalidNotification(
                f"notification is {size} bytes as a {platform} payload; the limit is {limit}: shorten body or data"
            )
