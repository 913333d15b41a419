"""Exceptions notifier raises. Provider answers are never exceptions: see ``outcomes``.

::

    NotifierError                 base of everything below
     ├── InvalidNotification      bad input at the boundary (register_device, notify, CLI);
     │                            raised before anything is stored or enqueued
     ├── ConfigError              the environment or the apps file is wrong; raised at startup
     └── StoreError               PostgreSQL unreachable or the schema is not migrated
"""


class NotifierError(Exception):
    """Base class of every exception notifier raises on purpose."""


class InvalidNotification(NotifierError, ValueError):
    """The caller passed something that can never be sent. Nothing was stored or enqueued."""


class ConfigError(NotifierError):
    """The configuration is missing or contradicts itself."""


class StoreError(NotifierError):
    """The token store cannot serve the request (not reachable, not migrated)."""
