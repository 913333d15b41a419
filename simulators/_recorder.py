"""The simulators' recorder: a thread-safe list of records under a ``threading.Condition``.

Records are appended on a simulator's event-loop thread and read from any thread. It keeps
a count of deliveries per target as records arrive (so counting is O(1)), and wakes
``wait_for`` callers at most once per :data:`WAKE_INTERVAL`: a wake-up per record halves
a simulator's throughput under load. The last record is never left unannounced: a wake-up
deferred on the event loop is delivered by :meth:`Recorder.wake` when the loop stops.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar, overload

__all__ = ["WAKE_INTERVAL", "Record", "Recorder", "RecordsView"]

WAKE_INTERVAL = 0.005  # seconds between wait_for wake-ups under load
LAST_SHOWN = 5  # records summarised in a wait_for TimeoutError


class Record(Protocol):
    """What the recorder needs of a record: the status answered (None/0: no answer)."""

    @property
    def status(self) -> int | None: ...


R = TypeVar("R", bound=Record)


class RecordsView(Sequence[R]):
    """A read-only live view of the records, handed to ``wait_for`` predicates."""

    def __init__(self, records: list[R]) -> None:
        self._records = records

    @overload
    def __getitem__(self, index: int) -> R: ...

    @overload
    def __getitem__(self, index: slice) -> list[R]: ...

    def __getitem__(self, index: int | slice) -> R | list[R]:
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[R]:
        return iter(self._records)


class Recorder(Generic[R]):
    """Records, delivery counts and ``wait_for``; ``cond`` (an RLock) guards them all.

    ``delivery_key(record)`` is the target a record delivered to (None: not a delivery),
    ``summary(record)`` how a TimeoutError shows it, ``detail()`` extra TimeoutError text.
    """

    def __init__(self, name: str, delivery_key: Callable[[R], str | None],
                 summary: Callable[[R], object], detail: Callable[[], str]) -> None:
        self.name = name
        self.cond = threading.Condition()
        self.items: list[R] = []
        self._delivery_key = delivery_key
        self._summary = summary
        self._detail = detail
        self._delivered: dict[str, int] = {}
        self._delivered_total = 0
        self._wake_pending = False
        self._last_wake = 0.0

    # -- reading (any thread) ----------------------------------------------------------
    def snapshot(self) -> list[R]:
        with self.cond:
            return list(self.items)

    def delivered(self) -> list[R]:
        with self.cond:
            return [r for r in self.items if self._delivery_key(r) is not None]

    def counts(self) -> dict[str, int]:
        with self.cond:
            return dict(self._delivered)

    def count(self, key: str | None) -> int:
        """Deliveries to ``key``, or in total when None."""
        with self.cond:
            return self._delivered_total if key is None else self._delivered.get(key, 0)

    def wait_for(self, predicate: Callable[[Sequence[R]], bool], timeout: float) -> list[R]:
        with self.cond:
            view = RecordsView(self.items)
            if self.cond.wait_for(lambda: predicate(view), timeout=timeout):
                return list(self.items)
            raise TimeoutError(self._timeout_message(timeout))

    def _timeout_message(self, timeout: float) -> str:
        statuses: dict[int | None, int] = {}
        for record in self.items:
            statuses[record.status] = statuses.get(record.status, 0) + 1
        last = [self._summary(r) for r in self.items[-LAST_SHOWN:]]
        return (f"{self.name} simulator: predicate still false after {timeout}s; "
                f"{len(self.items)} record(s), by status {statuses}, last {last}{self._detail()}")

    def clear(self) -> None:
        with self.cond:
            self.items.clear()
            self._delivered.clear()
            self._delivered_total = 0

    # -- writing (the event-loop thread) -----------------------------------------------
    def append(self, record: R) -> int:
        """Append a record, wake ``wait_for`` callers; returns its index."""
        with self.cond:
            self.items.append(record)
            self._count(record, 1)
            index = len(self.items) - 1
            delay = self._claim_wake()
        self._schedule_wake(delay)
        return index

    def replace(self, index: int, record: R) -> None:
        """Overwrite the record at ``index`` (its answer changed), wake ``wait_for``."""
        with self.cond:
            self._count(self.items[index], -1)
            self.items[index] = record
            self._count(record, 1)
            delay = self._claim_wake()
        self._schedule_wake(delay)

    def notify(self) -> None:
        """Wake ``wait_for`` callers after a change outside the records."""
        with self.cond:
            delay = self._claim_wake()
        self._schedule_wake(delay)

    def wake(self) -> None:
        with self.cond:
            self._wake_pending = False
            self._last_wake = time.monotonic()
            self.cond.notify_all()

    def _count(self, record: R, delta: int) -> None:
        key = self._delivery_key(record)
        if key is None:
            return
        count = self._delivered.get(key, 0) + delta
        if count:
            self._delivered[key] = count
        else:
            del self._delivered[key]
        self._delivered_total += delta

    def _claim_wake(self) -> float | None:
        """Under the lock: None if a wake-up is already due, else the delay before one."""
        if self._wake_pending:
            return None
        self._wake_pending = True
        return self._last_wake + WAKE_INTERVAL - time.monotonic()

    def _schedule_wake(self, delay: float | None) -> None:
        if delay is None:
            return
        if delay > 0:
            try:
                asyncio.get_running_loop().call_later(delay, self.wake)
                return
            except RuntimeError:  # not on an event loop: wake now
                pass
        self.wake()
