"""What one worker process keeps for its whole life: settings, the store, one event loop
in a thread, and one channel per (app, platform) living on that loop.

Created lazily in each process (after Celery's fork), never shared across processes.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis

from notifier.apns import ApnsChannel
from notifier.channel import BaseChannel, Channel, ProviderTopics
from notifier.config import Settings
from notifier.errors import ConfigError
from notifier.fcm import FcmChannel
from notifier.model import Platform
from notifier.store import Store
from notifier.webpush import WebPushChannel
from workers.breaker import Breakers

T = TypeVar("T")

CHANNELS: dict[Platform, type[BaseChannel[Any, Any]]] = {
    Platform.WEBPUSH: WebPushChannel,
    Platform.APNS: ApnsChannel,
    Platform.FCM: FcmChannel,
}


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        self.settings = settings
        self.store = Store(settings.database_url)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="notifier-loop", daemon=True)
        self._thread.start()
        self._channels: dict[tuple[str, Platform], Channel] = {}
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None

    def channel(self, app: str, platform: Platform) -> Channel:
        """The process's channel for an app; raises ConfigError when it has no credentials."""
        with self._lock:
            key = (app, platform)
            if key not in self._channels:
                self._channels[key] = CHANNELS[platform].from_config(self.settings.app(app), self.settings)
            return self._channels[key]

    def provider_topics(self, app: str) -> ProviderTopics:
        """The app's FCM channel, for what only FCM does: its own topics and conditions."""
        channel = self.channel(app, Platform.FCM)
        if not isinstance(channel, FcmChannel):
            raise ConfigError(f"app {app!r}: the fcm channel has no provider-side topics")
        return channel

    @property
    def redis(self) -> redis.Redis:
        """Shared state across workers: breakers and frequency caps."""
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
            return self._redis

    @property
    def breakers(self) -> Breakers:
        return Breakers(self.redis, self.settings.breaker_cooldown)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run a coroutine on the process's loop and wait for it; cancel it past ``timeout``."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # each send cleans up after itself when cancelled
            raise

    def close(self) -> None:
        for ch in self._channels.values():
            try:
                self.run(ch.close(), 10)
            except Exception:  # closing on the way out: nothing left to tell
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.store.close()


_current: Runtime | None = None
_guard = threading.Lock()


def runtime() -> Runtime:
    global _current
    with _guard:
        if _current is None or _current.pid != os.getpid():
            _current = Runtime(Settings.current())
        return _current


def shutdown() -> None:
    global _current
    with _guard:
        if _current is not None and _current.pid == os.getpid():
            _current.close()
        _current = None
