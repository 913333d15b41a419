"""The contract every channel implements, and the skeleton of a send, written once.

A channel turns a notification and a batch of devices into one outcome per device. It
has five verbs (``../shared/STYLE.md``):

- ``from_config(app, settings)``: clients from an already-checked config;
- ``build(notification, device)``: pure; the provider's request;
- ``send(notification, devices)``: one outcome per device, same order; never sleeps,
  never retries, never raises for anything a provider sends back;
- ``classify(answer)``: pure; a provider's answer (or a library exception) to an outcome;
- ``close()``, and ``async with``.

``BaseChannel`` holds what every channel shares: clients opened lazily on the worker's
event loop (a configuration fault there is a ``CredentialFailure`` for the batch), the
in-flight limit, a timeout on every send, network errors as retries, and the log line.
A channel supplies ``_open``, ``_transmit`` (one request on the wire) and ``_close``;
FCM, whose library sends in batches, also overrides ``_send_batch``.

Provider-specific extras are declared here too (``ProviderTopics``: FCM topic sends and
topic membership), so the runtime asks for them by type instead of reaching for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import ClassVar, Generic, Protocol, Self, TypeVar

from notifier import metrics
from notifier.config import AppConfig, Settings
from notifier.errors import ConfigError
from notifier.model import MAX_TTL, Device, Notification, Platform, ProviderTarget, redact
from notifier.outcomes import CredentialFailure, Delivered, Outcome, RetryAfter, every

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT")
AnswerT = TypeVar("AnswerT")
# Called on the event loop with a device's index in the batch and its outcome, as soon as
# it is known: the worker records outcomes while the batch runs.
Report = Callable[[int, Outcome], None]


def _ignore(index: int, outcome: Outcome) -> None:
    pass


class Channel(Protocol):
    """What the runtime needs of a channel."""

    app: str
    slowest: float  # seconds: the slowest provider answer since it was last set to 0

    async def send(self, n: Notification, devices: list[Device], report: Report = _ignore) -> list[Outcome]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TopicMembership:
    success: int = 0
    failure: int = 0


class ProviderTopics(Protocol):
    """A channel whose provider fans out to its own topics (FCM)."""

    async def send_to(self, n: Notification, target: ProviderTarget) -> Outcome: ...

    async def manage_topic(self, topic: str, tokens: list[str], subscribe: bool) -> TopicMembership: ...


class BaseChannel(ABC, Generic[RequestT, AnswerT]):
    platform: ClassVar[Platform]
    # What a lost or refused connection raises in this channel's library: a retry.
    NETWORK_ERRORS: ClassVar[tuple[type[BaseException], ...]] = (TimeoutError, OSError)
    # False where the transport bounds each request on the wire itself (APNs' stream
    # timer): waiting for a free stream must then not count against the send.
    TIMEOUT_EACH_SEND: ClassVar[bool] = True

    def __init__(self, app: str, *, timeout: float, max_in_flight: int) -> None:
        self.app = app
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._opened = False
        # the slowest provider answer since the runtime last reset it (one batch at a time
        # per process): for the batch's log line
        self.slowest = 0.0

    @classmethod
    @abstractmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> Self: ...

    @abstractmethod
    def build(self, n: Notification, device: Device) -> RequestT: ...

    @abstractmethod
    def classify(self, answer: AnswerT) -> Outcome: ...

    @abstractmethod
    async def _open(self) -> None:
        """Create the clients, on the event loop the sends run on; raises ConfigError."""

    @abstractmethod
    async def _transmit(self, request: RequestT) -> AnswerT:
        """Put one request on the wire and return the provider's answer."""

    async def _close(self) -> None:
        """Close what ``_open`` created."""

    def reject(self, n: Notification) -> Outcome | None:
        """An outcome for the whole batch when no device could take this message."""
        return None

    # -- the skeleton --------------------------------------------------------------

    async def send(self, n: Notification, devices: list[Device], report: Report = _ignore) -> list[Outcome]:
        rejected = self.reject(n)
        if rejected is None:
            try:
                await self._ensure_open()
            except ConfigError as exc:
                rejected = CredentialFailure(self.app, str(exc))
        if rejected is not None:
            for i in range(len(devices)):
                report(i, rejected)
            return every(rejected, devices)
        return await self._send_batch(n, devices, report)

    async def _ensure_open(self) -> None:
        if not self._opened:
            await self._open()
            self._opened = True

    async def _send_batch(self, n: Notification, devices: list[Device], report: Report) -> list[Outcome]:
        async def one(i: int, device: Device) -> Outcome:
            try:
                outcome = await self._send_one(self.build(n, device), device.token)
            except Exception as exc:  # a bug of ours about one device: never the whole batch
                log.exception("%s …%s: internal error", self.platform, redact(device.token))
                outcome = RetryAfter(None, f"internal error: {type(exc).__name__}")
            report(i, outcome)
            return outcome

        return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(devices))))

    async def _send_one(self, request: RequestT, token: str) -> Outcome:
        async with self._in_flight:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout if self.TIMEOUT_EACH_SEND else None):
                    answer = await self._transmit(request)
            except self.NETWORK_ERRORS as exc:
                outcome: Outcome = RetryAfter(None, f"network: {type(exc).__name__}")
            else:
                outcome = self.classify(answer)
            self._answered(time.perf_counter() - started)
        if not isinstance(outcome, Delivered):
            # the type and status only: a provider's words may echo what logs must not show
            log.info("%s …%s: %s %s", self.platform, redact(token), type(outcome).__name__,
                     getattr(outcome, "status", None))
        return outcome

    def _answered(self, seconds: float, requests: int = 1) -> None:
        """A provider answered (or did not, within the timeout) after ``seconds``."""
        self.slowest = max(self.slowest, seconds)
        for _ in range(requests):
            metrics.answered(self.platform.value, seconds)

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(app={self.app!r}, credentials=<redacted>)"


# No provider may park a message longer than its longest TTL (four weeks).
MAX_RETRY_AFTER = float(MAX_TTL)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header as seconds: delta-seconds or an HTTP date; None if absent or garbled."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
