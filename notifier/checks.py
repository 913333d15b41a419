"""The checks that keep bad input out: every public function raises
``InvalidNotification`` with a sentence a caller can act on, or returns a value of
``model``'s types. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from notifier.errors import InvalidNotification
from notifier.model import DEFAULT_TTL, MAX_TTL, CheckedToken, Notification, Platform, Priority
from notifier.preferences import check_category

# One notify() call names at most this many users; bigger audiences belong in topics.
MAX_AUDIENCE = 100_000
# The namespace that turns (app, idempotency key) into a stable notification id.
_IDEMPOTENCY_NS = uuid.UUID("6f1d3b0a-63a5-4c55-9f43-8b8f3a1f0c11")

_TOPIC_RE = re.compile(r"^[a-zA-Z0-9_.~%-]{1,900}$")  # FCM's topic-name rule, for every channel
_APP_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_APNS_TOKEN_RE = re.compile(r"^[0-9a-f]{64,200}$")
_FCM_TOKEN_RE = re.compile(r"^[A-Za-z0-9_:\-.]{20,4096}$")
_ENDPOINT_BAD_CHAR = re.compile(r"[\x00-\x20\x7f\\]")  # spaces, controls, backslash


def _fail(msg: str) -> InvalidNotification:
    return InvalidNotification(msg)


def check_app(app: object) -> str:
    if not isinstance(app, str) or not _APP_RE.match(app):
        raise _fail(f"app must be 1-64 characters of a-z 0-9 _ . - starting with a letter or digit, got {app!r}")
    return app


def check_user(user: object) -> str:
    if not isinstance(user, str) or not user.strip() or len(user) > 255 or _has_nul(user):
        raise _fail(f"a user id must be a non-empty string of at most 255 characters, got {user!r:.80}")
    return user


def check_platform(platform: object) -> Platform:
    if isinstance(platform, str) and platform in Platform.__members__.values():
        return Platform(platform)
    raise _fail(f"unknown platform {platform!r}: use one of {', '.join(p.value for p in Platform)}")


def check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise _fail(f"a topic name is 1-900 characters of a-z A-Z 0-9 - _ . ~ %, got {topic!r:.80}")
    return topic


def check_condition(condition: object) -> str:
    if not isinstance(condition, str) or "in topics" not in condition or len(condition) > 1000:
        raise _fail("an FCM condition looks like \"'news' in topics && 'uk' in topics\" (at most 1000 characters)")
    return condition


def check_audience(users: object) -> list[str]:
    """One user id or a list of them; duplicates dropped, order kept."""
    if isinstance(users, str):
        users = [users]
    if not isinstance(users, Sequence) or isinstance(users, (bytes, bytearray)):
        raise _fail(f"audience must be a user id or a list of user ids, got {type(users).__name__}")
    if not users:
        raise _fail("audience is empty: name at least one user id")
    if len(users) > MAX_AUDIENCE:
        raise _fail(f"audience names {len(users)} users; at most {MAX_AUDIENCE} per call")
    return list(dict.fromkeys(check_user(u) for u in users))



def check_token(platform: Platform, token: object) -> CheckedToken:
    """A provider token in canonical form, or a clear error."""
    if platform is Platform.APNS:
        if not isinstance(token, str) or not _APNS_TOKEN_RE.match(token.strip().lower()):
            raise _fail("an APNs device token is 64 or more hexadecimal characters")
        return CheckedToken(token.strip().lower())
    if platform is Platform.FCM:
        if not isinstance(token, str) or not _FCM_TOKEN_RE.match(token):
            raise _fail("an FCM registration token is 20-4096 characters of A-Z a-z 0-9 _ : - .")
        return CheckedToken(token)
    return _check_subscription(token)


def _b64url(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _fail(f"Web Push subscription keys.{what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _fail(f"Web Push subscription keys.{what} is not valid base64url") from None


def _check_subscription(sub: object) -> CheckedToken:
    if isinstance(sub, str):
        try:
            sub = json.loads(sub)
        except ValueError:
            raise _fail("a Web Push token is a PushSubscription: {endpoint, keys: {p256dh, auth}}") from None
    if not isinstance(sub, Mapping) or not isinstance(sub.get("keys"), Mapping):
        raise _fail("a Web Push token is a PushSubscription: {endpoint, keys: {p256dh, auth}}")
    endpoint = sub.get("endpoint")
    if not isinstance(endpoint, str) or len(endpoint) > 2048:
        raise _fail("a Web Push subscription endpoint must be an https URL of at most 2048 characters")
    if _ENDPOINT_BAD_CHAR.search(endpoint):
        # a backslash is a path separator to some URL parsers and not to others: refused,
        # so what we check is what aiohttp connects to
        raise _fail("a Web Push subscription endpoint cannot contain spaces, backslashes or control characters")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 -- raises ValueError on a port out of range or not a number
    except ValueError:
        raise _fail("a Web Push subscription endpoint must be an https URL with a valid port") from None
    if parts.scheme != "https" or not parts.hostname:
        raise _fail("a Web Push subscription endpoint must be an https URL of at most 2048 characters")
    keys = sub["keys"]
    p256dh = _b64url(keys.get("p256dh"), "p256dh")
    if len(p256dh) != 65 or p256dh[0] != 4:
        raise _fail("Web Push keys.p256dh must be an uncompressed P-256 public key (65 bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        raise _fail("Web Push keys.p256dh is not a point on the P-256 curve") from None
    if len(_b64url(keys.get("auth"), "auth")) != 16:
        raise _fail("Web Push keys.auth must be a 16-byte secret")
    return CheckedToken(endpoint, keys["p256dh"].rstrip("="), keys["auth"].rstrip("="))


def _has_nul(value: object) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000, nor a lone surrogate, anywhere."""
    if isinstance(value, str):
        return "\x00" in value or (not value.isascii() and _unencodable(value))
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def _unencodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_json(data: object) -> dict[str, Any]:
    if data is None:
        return {}
    if _has_nul(data):
        raise _fail("data cannot contain the NUL character (U+0000) or unpaired surrogates")
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise _fail("data must be a mapping with string keys")
    if "aps" in data:
        raise _fail("data key 'aps' is reserved for Apple's dictionary")
    reserved = [k for k in data if k in ("from", "notification", "message_type") or k.startswith(("google", "gcm"))]
    if reserved:
        raise _fail(f"data keys {reserved} are reserved by FCM")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(f"data must be JSON-serialisable: {exc}") from None
    return dict(data)


def _opt_str(name: str, value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or _has_nul(value) or len(value.encode()) > limit:
        raise _fail(f"{name} must be a non-empty UTF-8 string of at most {limit} bytes, without NUL characters")
    return value


def build_notification(
    *,
    title: object = None,
    body: object = None,
    data: object = None,
    badge: object = None,
    sound: object = None,
    silent: object = False,
    ttl: object = None,
    collapse_key: object = None,
    priority: object = "high",
    thread_id: object = None,
    mutable_content: object = False,
    title_loc_key: object = None,
    title_loc_args: object = (),
    body_loc_key: object = None,
    body_loc_args: object = (),
    android_channel_id: object = None,
    category: object = None,
) -> Notification:
    """The checked notification; payload size is checked by ``payload.check_fits``."""
    if not isinstance(silent, bool):
        raise _fail("silent must be True or False")
    if not isinstance(mutable_content, bool):
        raise _fail("mutable_content must be True or False")
    title_s = _opt_str("title", title, 4096)
    body_s = _opt_str("body", body, 4096)
    tkey, bkey = _opt_str("title_loc_key", title_loc_key, 256), _opt_str("body_loc_key", body_loc_key, 256)
    targs, bargs = _str_list("title_loc_args", title_loc_args), _str_list("body_loc_args", body_loc_args)
    if (targs and not tkey) or (bargs and not bkey):
        raise _fail("localisation arguments need their localisation key")
    visible = title_s or body_s or tkey or bkey
    if silent and (visible or sound is not None or mutable_content):
        raise _fail("a silent notification is data-only: leave out title, body, loc keys, sound and mutable_content")
    if not silent and not visible:
        raise _fail("a visible notification needs a title or a body (or pass silent=True)")
    if badge is not None and (not isinstance(badge, int) or isinstance(badge, bool) or not 0 <= badge <= 99_999):
        raise _fail("badge must be an integer from 0 to 99999")
    if ttl is None:
        ttl = DEFAULT_TTL
    if isinstance(ttl, float) and math.isfinite(ttl) and ttl.is_integer():
        ttl = int(ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
        raise _fail(f"ttl must be whole seconds from 0 to {MAX_TTL} (28 days)")
    if not isinstance(priority, str) or priority not in Priority.__members__.values():
        raise _fail("priority must be 'high' or 'normal'")
    prio = Priority(priority)
    return Notification(
        title=title_s,
        body=body_s,
        data=_check_json(data),
        badge=badge,
        sound=_opt_str("sound", sound, 256),
        silent=silent,
        ttl=ttl,
        collapse_key=_opt_str("collapse_key", collapse_key, 64),
        priority=prio,
        thread_id=_opt_str("thread_id", thread_id, 256),
        mutable_content=mutable_content,
        title_loc_key=tkey,
        title_loc_args=targs,
        body_loc_key=bkey,
        body_loc_args=bargs,
        android_channel_id=_opt_str("android_channel_id", android_channel_id, 256),
        category=check_category(category),
    )


def _str_list(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise _fail(f"{name} must be a list of strings")
    if len(value) > 32:
        raise _fail(f"{name} takes at most 32 arguments")
    if _has_nul(list(value)):
        raise _fail(f"{name} cannot contain the NUL character (U+0000)")
    return tuple(value)


def check_notification_id(value: object) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise _fail(f"{value!r} is not a notification id") from None


def notification_id(app: str, idempotency_key: object) -> str:
    """A fresh id, or the same id every time for the same (app, idempotency key)."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    key = _opt_str("idempotency_key", idempotency_key, 200)
    return str(uuid.uuid5(_IDEMPOTENCY_NS, f"{app}\x00{key}"))
