"""What one worker process keeps for its whole life: settings, the store, one event loop
in a thread, and one channel per (app, platform) living on that loop.

Created lazily in each process (after Celery's fork), never shared across processes.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Coroutine, Protocol, TypeVar

import redis

from notifier.config import Settings
from notifier.model import Device, Notification, Platform
from notifier.outcomes import Outcome
from notifier.store import Store
from notifier.apns import ApnsChannel
from notifier.fcm import FcmChannel
from notifier.webpush import WebPushChannel
from workers.breaker import Breaker

T = TypeVar("T")


class Channel(Protocol):
    async def send(self, n: Notification, devices: list[Device]) -> list[Outcome]: ...
    async def close(self) -> None: ...


CHANNELS: dict[Platform, Any] = {
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
                cls = CHANNELS.get(platform)
                if cls is None:
                    from notifier.errors import ConfigError

                    raise ConfigError(f"no {platform} channel in this build")
                self._channels[key] = cls.from_config(self.settings.app(app), self.settings)
            return self._channels[key]

    def breaker(self, app: str, platform: Platform) -> Breaker:
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
        return Breaker(self._redis, app, platform.value)

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
            _current = Runtime(Settings.from_env())
        return _current


def shutdown() -> None:
    global _current
    with _guard:
        if _current is not None and _current.pid == os.getpid():
            _current.close()
        _current = None
