"""The values notifier passes around: the notification, the device, the audience, and a
notify call prepared at the boundary.

Pure data: no I/O, no validation (that is ``checks``), nothing of ours imported. A
value of these types has passed the boundary; code past it never checks it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

# Longest a provider will hold a message: APNs and FCM both cap at four weeks.
MAX_TTL = 28 * 24 * 3600
# Default TTL when the caller gives none: a day is long enough to reach a phone that was
# off overnight, short enough that "your code is 123456" never arrives next week.
DEFAULT_TTL = 24 * 3600
# Local wall-clock times span the world's offsets: UTC+14 reaches 08:00 first, UTC-12 last.
EARLIEST_OFFSET, LATEST_OFFSET = timedelta(hours=14), timedelta(hours=12)
# The least time a notification stays sendable after notify(), whatever its TTL: a TTL
# of 0 means "now or never" to a provider, not "never".
TTL_GRACE = 30


class Platform(StrEnum):
    APNS = "apns"
    FCM = "fcm"
    WEBPUSH = "webpush"


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class Notification:
    """What the caller wants shown; channels turn it into each provider's request."""

    title: str | None = None
    body: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    badge: int | None = None
    sound: str | None = None
    silent: bool = False
    ttl: int = DEFAULT_TTL
    collapse_key: str | None = None
    priority: Priority = Priority.HIGH
    # Apple's extras (FCM carries them to iOS devices too); ignored by Web Push.
    thread_id: str | None = None
    mutable_content: bool = False
    title_loc_key: str | None = None
    title_loc_args: tuple[str, ...] = ()
    body_loc_key: str | None = None
    body_loc_args: tuple[str, ...] = ()
    # Android's notification channel (FCM); ignored elsewhere.
    android_channel_id: str | None = None
    # The app's category (apps file): users opt out by category; it says what quiet hours
    # do and caps how many a user gets.
    category: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = dict(self.data)
        out["priority"] = str(self.priority)
        out["title_loc_args"] = list(self.title_loc_args)
        out["body_loc_args"] = list(self.body_loc_args)
        if out["category"] is None:  # as before categories: fingerprints stored then still match
            del out["category"]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Notification:
        return cls(**{
            **raw,
            "priority": Priority(raw.get("priority", "high")),
            "title_loc_args": tuple(raw.get("title_loc_args", ())),
            "body_loc_args": tuple(raw.get("body_loc_args", ())),
        })


@dataclass(frozen=True, slots=True)
class Device:
    """One row of the token store, as channels see it."""

    id: int
    app: str
    platform: Platform
    token: str
    # Web Push only: the subscription's p256dh and auth keys (base64url).
    p256dh: str | None = None
    auth: str | None = None

    def __repr__(self) -> str:
        return f"Device(id={self.id}, app={self.app!r}, platform={self.platform}, token=…{redact(self.token)})"


def redact(token: str) -> str:
    """A token as logs may show it: its last 6 characters."""
    return token[-6:]



@dataclass(frozen=True, slots=True)
class CheckedToken:
    token: str
    p256dh: str | None = None
    auth: str | None = None



# -- audiences: exactly one per notification -------------------------------------------


@dataclass(frozen=True, slots=True)
class Users:
    """These users' devices, on every platform (fanned out by us)."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Topic:
    """Every device subscribed to one of our own topics, on every platform (fanned out by us)."""

    name: str


@dataclass(frozen=True, slots=True)
class Everyone:
    """Every device of the app, or of the app on one platform: a broadcast, paged straight
    over the devices table (a million devices is beyond a user list; a topic is the wrong
    tool for "all my users")."""

    platform: Platform | None = None


@dataclass(frozen=True, slots=True)
class FcmTopic:
    """An FCM-side topic: one request to FCM, which fans out; no per-device outcomes."""

    name: str


@dataclass(frozen=True, slots=True)
class FcmCondition:
    """An FCM condition over FCM-side topics: one request, like ``FcmTopic``."""

    expression: str


Audience = Users | Topic | Everyone | FcmTopic | FcmCondition
FanOut = Users | Topic | Everyone
ProviderTarget = FcmTopic | FcmCondition


def audience_to_json(audience: Audience) -> dict[str, Any]:
    match audience:
        case Users(ids):
            return {"users": list(ids)}
        case Topic(name):
            return {"topic": name}
        case Everyone(platform):
            return {"everyone": platform.value if platform else True}
        case FcmTopic(name):
            return {"fcm_topic": name}
        case FcmCondition(expression):
            return {"fcm_condition": expression}


def audience_from_json(raw: Mapping[str, Any]) -> Audience:
    """The inverse of ``audience_to_json``; trusts its input (it was checked at the boundary)."""
    if "users" in raw:
        return Users(tuple(raw["users"]))
    if "topic" in raw:
        return Topic(raw["topic"])
    if "everyone" in raw:
        return Everyone(None if raw["everyone"] is True else Platform(raw["everyone"]))
    if "fcm_topic" in raw:
        return FcmTopic(raw["fcm_topic"])
    return FcmCondition(raw["fcm_condition"])


@dataclass(frozen=True, slots=True)
class LocalTime:
    """A wall-clock time in each user's time zone: on ``day``, or (no day) its next
    occurrence after the notification is fanned out."""

    at: time
    day: date | None = None

    def __str__(self) -> str:
        clock = self.at.strftime("%H:%M")
        return clock if self.day is None else f"{self.day.isoformat()}T{clock}"

    @classmethod
    def parse(cls, text: str) -> LocalTime:
        """The inverse of ``str()``; trusts its input (it was checked at the boundary)."""
        if "T" in text:
            when = datetime.fromisoformat(text)
            return cls(when.time(), when.date())
        return cls(time.fromisoformat(text))

    def earliest(self, now: datetime) -> datetime:
        """The first instant at which some time zone reaches it."""
        if self.day is None:
            return now
        return max(now, datetime.combine(self.day, self.at, UTC) - EARLIEST_OFFSET)

    def latest(self, now: datetime) -> datetime:
        """The last instant at which some time zone reaches it (a day and an hour of DST
        after ``now`` for the next occurrence)."""
        if self.day is None:
            return now + timedelta(hours=25)
        return max(now, datetime.combine(self.day, self.at, UTC) + LATEST_OFFSET)


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    """A notify() call, checked once at the boundary (``api.prepare_notify``).

    It crosses the broker as ``to_json()``; the worker rebuilds it with ``from_json``
    and never validates it again.
    """

    id: str
    app: str
    audience: Audience
    notification: Notification
    # When the caller called notify(): the TTL counts from here, not from when a worker ran.
    requested_at: datetime
    # Scheduled: not fanned out before this instant (the TTL counts from it) ...
    send_at: datetime | None = None
    # ... or sent at this wall-clock time in each user's time zone (the TTL counts from the last)
    local_at: LocalTime | None = None

    @property
    def release_at(self) -> datetime | None:
        """Scheduled: the fan-out starts no earlier than this (None: at once)."""
        if self.local_at is not None:
            return self.local_at.earliest(self.requested_at)
        return self.send_at

    @property
    def starts_at(self) -> datetime:
        """When its TTL starts: the last instant it is released."""
        if self.local_at is not None:
            return self.local_at.latest(self.requested_at)
        return max(self.requested_at, self.send_at or self.requested_at)

    @property
    def expires_at(self) -> datetime:
        return self.starts_at + timedelta(seconds=max(self.notification.ttl, TTL_GRACE))

    def fingerprint(self) -> str:
        """What an idempotency key stands for: the app, the audience and the content."""
        canonical = json.dumps([self.app, audience_to_json(self.audience), self.notification.to_json()],
                               sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            "audience": audience_to_json(self.audience),
            "notification": self.notification.to_json(),
            "requested_at": self.requested_at.isoformat(),
            **({"send_at": self.send_at.isoformat()} if self.send_at else {}),
            **({"local_at": str(self.local_at)} if self.local_at else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> NotifyRequest:
        return cls(
            id=raw["id"],
            app=raw["app"],
            audience=audience_from_json(raw["audience"]),
            notification=Notification.from_json(raw["notification"]),
            requested_at=datetime.fromisoformat(raw["requested_at"]),
            send_at=datetime.fromisoformat(raw["send_at"]) if raw.get("send_at") else None,
            local_at=LocalTime.parse(raw["local_at"]) if raw.get("local_at") else None,
        )
