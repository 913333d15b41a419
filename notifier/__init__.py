"""notifier: push notifications to APNs, FCM and Web Push, fanned out by Celery.

This package is the domain and never imports Celery; ``notify`` is in ``workers``.
"""

from notifier.api import (
    cancel,
    register_device,
    set_preferences,
    subscribe_topic,
    unregister_device,
    unsubscribe_topic,
)
from notifier.bulk import ImportReport, register_devices
from notifier.errors import ConfigError, InvalidNotification, NotifierError, StoreError
from notifier.model import Notification, Platform

__all__ = [
    "ConfigError",
    "ImportReport",
    "InvalidNotification",
    "Notification",
    "NotifierError",
    "Platform",
    "StoreError",
    "cancel",
    "register_device",
    "register_devices",
    "set_preferences",
    "subscribe_topic",
    "unregister_device",
    "unsubscribe_topic",
]
