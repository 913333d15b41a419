"""When a notification may reach a user, and whether it should at all.

Pure checks and values, no I/O: a notification's send time (an absolute instant, or a
wall-clock time in each user's own time zone), a user's preferences (time zone, quiet
hours, categories opted out of), and an app's categories (what quiet hours do to each,
and a frequency cap). The store applies them in SQL when the fan-out writes delivery
rows; the frequency cap is counted in Redis by the workers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from notifier.errors import ConfigError, InvalidNotification
from notifier.model import LocalTime

_CATEGORY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CLOCK_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# Furthest a scheduled notification may lie ahead: long enough for any campaign, short
# enough that a typo in the year is refused rather than kept for ever.
MAX_AHEAD = timedelta(days=366)
QUIET_MODES = ("defer", "drop", "ignore")


@dataclass(frozen=True, slots=True)
class Category:
    """An app's category of notifications (apps file, ``[apps.NAME.categories.CATEGORY]``)."""

    name: str
    # what a user's quiet hours do to it: defer to their end, drop, or ignore them
    quiet_hours: str = "defer"
    # at most ``cap`` notifications of this category per user within ``cap_window`` seconds
    cap: int | None = None
    cap_window: int = 86_400
    # critical: a user none of whose devices has a Delivered outcome within
    # ``confirm_within`` seconds gets the fallback, once: a Celery task by name (on
    # ``fallback_queue``) and/or a webhook POST
    critical: bool = False
    confirm_within: int = 600
    fallback_task: str | None = None
    fallback_queue: str = "fallback"
    fallback_webhook: str | None = None


# A notification without a category (or with one the apps file does not describe) ignores
# quiet hours and has no cap: a login code or a reply must not wait for the morning.
UNCATEGORISED = Category("", quiet_hours="ignore")


def check_send_at(value: object, now: datetime) -> datetime | LocalTime | None:
    """``send_at``: an aware datetime (that instant), a naive one or ``"YYYY-MM-DDTHH:MM"``
    (that wall-clock time in each user's time zone), or ``"HH:MM"`` (its next occurrence
    in each user's time zone)."""
    if value is None:
        return None
    if isinstance(value, str):
        if m := _CLOCK_RE.match(value):
            return LocalTime(time(int(m[1]), int(m[2])))
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidNotification(
                "send_at is a datetime, an ISO 8601 date-time, or 'HH:MM' (each user's local time)") from None
    if not isinstance(value, datetime):
        raise InvalidNotification("send_at is a datetime, an ISO 8601 date-time, or 'HH:MM' (each user's local time)")
    if value.tzinfo is None:
        local = LocalTime(value.time().replace(second=0, microsecond=0), value.date())
        if local.latest(now) - now > MAX_AHEAD:
            raise InvalidNotification("send_at is more than a year ahead")
        return local
    if value - now > MAX_AHEAD:
        raise InvalidNotification("send_at is more than a year ahead")
    return value.astimezone(UTC)


def check_category(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CATEGORY_RE.match(value):
        raise InvalidNotification("category is 1-64 characters: lower-case letters, digits, '_', '.', '-'")
    return value


def check_time_zone(value: object) -> str:
    if not isinstance(value, str) or not value or value not in _zones():
        raise InvalidNotification(f"time_zone must be an IANA time zone name such as 'Europe/Berlin', got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidNotification(f"unknown time zone {value!r}") from None
    return value


def check_quiet_hours(value: object) -> tuple[time, time] | None:
    """``("22:00", "07:00")``: from the first to the second, in the user's time zone (it may
    run past midnight); None for none."""
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, str) and _CLOCK_RE.match(v) for v in value) or value[0] == value[1]):
        raise InvalidNotification("quiet_hours is a pair of different 'HH:MM' times, such as ('22:00', '07:00')")
    return time.fromisoformat(value[0]), time.fromisoformat(value[1])


def check_opt_out(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise InvalidNotification("opt_out is a list of category names")
    out = tuple(sorted({c for c in (check_category(v) for v in value) if c}))
    if len(out) > 100:
        raise InvalidNotification("opt_out names at most 100 categories")
    return out


def _zones() -> set[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = available_timezones() | {"UTC"}
    return _ZONES


_ZONES: set[str] | None = None


def parse_categories(where: str, raw: object) -> dict[str, Category]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: categories is a table of tables")
    out: dict[str, Category] = {}
    for name, t in raw.items():
        try:
            check_category(name)
        except InvalidNotification as exc:
            raise ConfigError(f"{where}.{name}: {exc}") from None
        out[name] = _category(f"{where}.{name}", name, t)
    return out


_CATEGORY_KEYS = {"quiet_hours", "cap", "cap_window", "critical", "confirm_within", "fallback_task",
                  "fallback_queue", "fallback_webhook"}


def _category(where: str, name: str, t: Any) -> Category:
    if not isinstance(t, Mapping) or set(t) - _CATEGORY_KEYS:
        raise ConfigError(f"{where}: a category takes {', '.join(sorted(_CATEGORY_KEYS))}")
    quiet = t.get("quiet_hours", "defer")
    if quiet not in QUIET_MODES:
        raise ConfigError(f"{where}: quiet_hours is one of {', '.join(QUIET_MODES)}")
    cap, window = t.get("cap"), t.get("cap_window", 86_400)
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ConfigError(f"{where}: cap is a positive whole number of notifications")
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 31 * 86_400:
        raise ConfigError(f"{where}: cap_window is whole seconds, at most 31 days")
    return Category(name, quiet, cap, window, **_critical(where, t))


def _critical(where: str, t: Mapping[str, Any]) -> dict[str, Any]:
    critical = t.get("critical", False)
    if not isinstance(critical, bool):
        raise ConfigError(f"{where}: critical is true or false")
    if not critical:
        if set(t) & {"confirm_within", "fallback_task", "fallback_queue", "fallback_webhook"}:
            raise ConfigError(f"{where}: a fallback needs critical = true")
        return {}
    within, task, queue, hook = (t.get("confirm_within", 600), t.get("fallback_task"),
                                 t.get("fallback_queue", "fallback"), t.get("fallback_webhook"))
    if not isinstance(within, int) or isinstance(within, bool) or not 1 <= within <= 7 * 86_400:
        raise ConfigError(f"{where}: confirm_within is whole seconds, at most 7 days")
    if task is None and hook is None:
        raise ConfigError(f"{where}: a critical category needs fallback_task or fallback_webhook")
    if task is not None and (not isinstance(task, str) or not re.fullmatch(r"[\w.:-]{1,200}", task)):
        raise ConfigError(f"{where}: fallback_task is a Celery task name")
    if not isinstance(queue, str) or not re.fullmatch(r"[\w.:-]{1,200}", queue):
        raise ConfigError(f"{where}: fallback_queue is a queue name")
    if hook is not None and (not isinstance(hook, str) or not re.match(r"https?://[^/\s]+", hook)):
        raise ConfigError(f"{where}: fallback_webhook is an http(s) URL")
    return {"critical": True, "confirm_within": within, "fallback_task": task, "fallback_queue": queue,
            "fallback_webhook": hook}
