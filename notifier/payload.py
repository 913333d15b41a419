"""Each provider's message body for a notification, and the size check done at notify() time.

Pure functions. A channel's ``build`` wraps these with the per-device parts (headers, token).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from notifier.errors import InvalidNotification
from notifier.model import Notification, Platform, Priority

# RFC 8291 aes128gcm in one record: 86-byte header (salt, rs, keyid = sender's 65-byte
# key), 1 padding delimiter, 16-byte tag. Push services refuse bodies over 4096 bytes.
WEBPUSH_MAX_PLAINTEXT = 4096 - 103
# APNs refuses a JSON payload over 4 KB (413 PayloadTooLarge).
APNS_MAX_PAYLOAD = 4096


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def urgent(n: Notification) -> bool:
    """High priority on every provider: asked for, and not silent (a background push is
    always low priority: APNs refuses priority 10 for it, and Android and browsers would
    wake the device for nothing the user sees)."""
    return n.priority is Priority.HIGH and not n.silent


def apns_headers(n: Notification) -> dict[str, str]:
    """The apns-* headers of a notification (sent by us to APNs, and by FCM to iOS)."""
    headers = {"apns-priority": "10" if urgent(n) else "5", "apns-push-type": "background" if n.silent else "alert"}
    if n.collapse_key:
        headers["apns-collapse-id"] = n.collapse_key
    return headers


_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def topic_for(collapse_key: str) -> str:
    """A Web Push Topic header value (<= 32 base64url characters) for a collapse key."""
    if _TOPIC_RE.match(collapse_key):
        return collapse_key
    digest = hashlib.sha256(collapse_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:32]


def webpush_headers(n: Notification) -> dict[str, str]:
    """RFC 8030 Urgency and Topic (sent by us to push services, and by FCM to browsers)."""
    headers = {"Urgency": "high" if urgent(n) else "normal"}
    if n.collapse_key:
        headers["Topic"] = topic_for(n.collapse_key)
    return headers


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
