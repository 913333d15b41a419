"""The application-facing calls that touch the token store directly.

``notify`` lives in ``workers`` (it is a Celery task); these two need no broker.
"""

from __future__ import annotations

import os
import threading

from notifier.config import Settings
from notifier.errors import InvalidNotification
from notifier.model import Platform, check_app, check_platform, check_token, check_topic, check_user
from notifier.store import Store

_lock = threading.Lock()
_default: tuple[int, Store] | None = None


def default_store() -> Store:
    """One store per process (re-created after a fork), from the environment."""
    global _default
    with _lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), Store(Settings.current().database_url))
        return _default[1]


def _check_known_app(app: str, platform: Platform, settings: Settings) -> None:
    if settings.apps_file is None:
        return  # no apps file here (a web process): the workers check it
    cfg = settings.apps.get(app)
    if cfg is None or platform not in cfg.platforms():
        raise InvalidNotification(f"app {app!r} has no {platform} credentials in {settings.apps_file}")


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
    _check_known_app(app, plat, Settings.current())
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
