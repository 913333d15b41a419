"""The boundary: every call an application makes is checked here, once.

``prepare_notify`` turns a notify() call into a ``NotifyRequest`` (``workers.notify``
enqueues it; the worker never checks it again). ``register_device`` and the topic calls
touch the token store directly and need no broker. Each raises ``InvalidNotification``
before anything is stored or enqueued.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

from notifier.checks import (
    build_notification,
    check_app,
    check_audience,
    check_condition,
    check_notification_id,
    check_platform,
    check_token,
    check_topic,
    check_user,
    notification_id,
)
from notifier.config import Settings
from notifier.errors import InvalidNotification
from notifier.model import (
    Audience,
    Everyone,
    FcmCondition,
    FcmTopic,
    LocalTime,
    Notification,
    NotifyRequest,
    Platform,
    Topic,
    Users,
)
from notifier.payload import check_fits
from notifier.preferences import check_opt_out, check_quiet_hours, check_send_at, check_time_zone
from notifier.store import Store
from notifier.store.rules import UNSET

_lock = threading.Lock()
_default: tuple[int, Store] | None = None


def default_store() -> Store:
    """One store per process (re-created after a fork), from the environment."""
    global _default
    with _lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), Store(Settings.current().database_url))
        return _default[1]


def _check_known_app(app: str, platform: Platform | None, settings: Settings) -> None:
    """With an apps file here, the app must be in it (with credentials for ``platform``).

    Without one (a web process that only enqueues), the workers check it.
    """
    if settings.apps_file is None:
        return
    cfg = settings.apps.get(app)
    if cfg is None:
        raise InvalidNotification(f"app {app!r} is not in {settings.apps_file}")
    if platform is not None and platform not in cfg.platforms():
        raise InvalidNotification(f"app {app!r} has no {platform} credentials in {settings.apps_file}")


def _audience(users: object, topic: object, everyone: object, fcm_topic: object, fcm_condition: object
              ) -> Audience:
    given = {k: v for k, v in (("users", users), ("topic", topic), ("everyone", everyone), ("fcm_topic", fcm_topic),
                               ("fcm_condition", fcm_condition)) if v is not None and v is not False}
    if len(given) != 1:
        raise InvalidNotification(
            "notify() needs exactly one audience: users, topic, everyone, fcm_topic or fcm_condition")
    if users is not None:
        return Users(tuple(check_audience(users)))
    if topic is not None:
        return Topic(check_topic(topic))
    if everyone is not None:
        if everyone is True:
            return Everyone()
        if isinstance(everyone, str):
            return Everyone(check_platform(everyone))
        raise InvalidNotification("everyone is True (every device of the app) or a platform name")
    if fcm_topic is not None:
        return FcmTopic(check_topic(fcm_topic))
    return FcmCondition(check_condition(fcm_condition))


def prepare_notify(
    app: object = None,
    users: object = None,
    *,
    topic: object = None,
    everyone: object = None,
    fcm_topic: object = None,
    fcm_condition: object = None,
    idempotency_key: object = None,
    send_at: object = None,
    **fields: object,
) -> NotifyRequest:
    """The whole check of a notify() call: app, exactly one audience, the notification's
    fields (``checks.build_notification``) and its size on every provider.

    With ``idempotency_key`` the id is derived from (app, key), and the notification is
    stored now: the same call twice is one notification, and the key reused with another
    audience or content is refused (``InvalidNotification``). That needs the store in the
    caller; calls without a key need only the broker.

    ``send_at`` schedules it (``preferences.check_send_at``): an instant, or a wall-clock
    time in each user's time zone. A scheduled notification is stored now and waits in
    PostgreSQL (``schedule_notification``), never in the broker.
    """
    if app is None:
        raise InvalidNotification("notify() needs app and an audience")
    name = check_app(app)
    audience = _audience(users, topic, everyone, fcm_topic, fcm_condition)
    unknown = sorted(set(fields) - set(Notification.__dataclass_fields__))
    if unknown:
        raise InvalidNotification(f"notify() got unknown fields {unknown}")
    n = build_notification(**fields)
    check_fits(n)
    settings = Settings.current()
    _check_known_app(name, None, settings)
    now = datetime.now(UTC)
    when = check_send_at(send_at, now)
    if when is not None and isinstance(audience, FcmTopic | FcmCondition) and isinstance(when, LocalTime):
        raise InvalidNotification("an FCM topic or condition has no users' time zones: give send_at as an instant")
    request = NotifyRequest(notification_id(name, idempotency_key), name, audience, n, now,
                            send_at=when if isinstance(when, datetime) else None,
                            local_at=when if isinstance(when, LocalTime) else None)
    if idempotency_key is not None:
        stored = default_store().create_notification(request, grace=settings.dispatch_grace)
        if stored is not None and stored != request.fingerprint():
            raise InvalidNotification(
                f"idempotency key {idempotency_key!r} was used before with another audience or content: "
                "one key stands for one notification")
    return request


def register_device(app: str, user: str, platform: str, token: object, *, store: Store | None = None) -> int:
    """Store a device for ``user``; return its id.

    ``token`` is the APNs device token (hex), the FCM registration token, or for Web Push
    the browser's PushSubscription (dict or its JSON). A token already known for the app
    moves to ``user`` and is refreshed, never duplicated.
    """
    app = check_app(app)
    user = check_user(user)
    plat = check_platform(platform)
    checked = check_token(plat, token)
    settings = Settings.current()
    _check_known_app(app, plat, settings)
    if plat is Platform.WEBPUSH:
        settings.endpoint_policy.check_resolved(checked.token)
    return (store or default_store()).register(app, user, plat, checked)


def unregister_device(app: str, platform: str, token: object, *, store: Store | None = None) -> bool:
    """Remove a device; True when it existed."""
    plat = check_platform(platform)
    return (store or default_store()).unregister(check_app(app), plat, check_token(plat, token).token)


def subscribe_topic(app: str, topic: str, platform: str, token: object, *, store: Store | None = None) -> None:
    """Subscribe a registered device to one of our topics (every channel; see README)."""
    plat = check_platform(platform)
    checked = check_token(plat, token)
    if not (store or default_store()).subscribe(check_app(app), check_topic(topic), plat, checked.token):
        raise InvalidNotification("that device is not registered for this app: register_device first")


def unsubscribe_topic(app: str, topic: str, platform: str, token: object, *, store: Store | None = None) -> bool:
    plat = check_platform(platform)
    return (store or default_store()).unsubscribe(check_app(app), check_topic(topic), plat,
                                                  check_token(plat, token).token)


def set_preferences(app: str, user: str, *, time_zone: object = UNSET, quiet_hours: object = UNSET,
                    opt_out: object = UNSET, store: Store | None = None) -> None:
    """A user's preferences, each kept as it is unless given: ``time_zone`` (IANA name, or
    None for the app's), ``quiet_hours`` (``("22:00", "07:00")`` in that zone, or None), and
    ``opt_out`` (the categories the user wants none of; an empty list for none)."""
    app, user = check_app(app), check_user(user)
    tz = time_zone if time_zone is UNSET or time_zone is None else check_time_zone(time_zone)
    quiet = quiet_hours if quiet_hours is UNSET else check_quiet_hours(quiet_hours)
    out = opt_out if opt_out is UNSET else check_opt_out(opt_out)
    (store or default_store()).set_preferences(app, user, time_zone=tz, quiet_hours=quiet, opt_out=out)


def cancel(notification_id: object, *, store: Store | None = None) -> tuple[bool, int]:
    """Cancel what a notification has not sent yet (all of it, before a scheduled release).
    Returns (its fan-out was still to come, deliveries cancelled)."""
    nid = check_notification_id(notification_id)
    result = (store or default_store()).cancel(nid)
    if result is None:
        raise InvalidNotification(f"no notification {nid}")
    return result
