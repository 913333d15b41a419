"""The one base of the push-service simulators: lifecycle, recorder, scripts, outage, wait_for.

:class:`SimulatorBase` is what the APNs, FCM and Web Push simulators share; each subclass
keeps only its own protocol (how it listens, how it checks and answers a request). The
interface below is the same on all three, under the same names.

Lifecycle
    ``start()`` returns the simulator: an asyncio event loop in a daemon thread listening
    on 127.0.0.1:``port`` (``port=0`` picks a free one, then ``port`` holds it). Starting a
    started simulator does nothing. ``stop()`` closes the listener, aborts every open
    connection (answers still in flight are lost, as if the service crashed) and ends the
    thread; records, scripts and the outage are kept. ``restart()`` is ``stop()`` then
    listening again on the same port. ``with Simulator() as sim:`` starts and stops.
    ``base_url`` is ``https://127.0.0.1:PORT``; ``running`` says whether it listens.

Recorder (thread-safe; every list returned is a copy)
    ``records``                 every request, in the order answered, one frozen dataclass
                                each, with ``status`` (the HTTP status answered; None or 0
                                when nothing was, see the simulator's record type)
    ``delivered()``             the records of requests the service accepted
    ``deliveries_by_token()``   target -> number of accepted requests (a count above 1 is a
                                duplicate delivery); the target is the APNs device token,
                                the FCM registration token, the Web Push subscription id
    ``delivered_count(t=None)`` accepted requests for one target, or in total; O(1)
    ``wait_for(predicate, timeout=10.0)``
                                block until ``predicate(records)`` holds and return a
                                snapshot of the records; ``records`` is a read-only live
                                view, evaluated under the lock whenever a record arrives
                                (no polling). Raises TimeoutError, naming the simulator,
                                the timeout and what arrived, when it still fails after
                                ``timeout`` seconds.
    ``reset()``                 forget records, scripts and the outage

Scripts (behaviour names and their params are per simulator, see its module docstring)
    ``script(target, behaviour, *, times=None, **params)``
                                answer ``target``'s valid requests with ``behaviour``;
                                ``times=N`` answers N times then reverts to "live"; a
                                request rejected before the script (bad auth, malformed)
                                does not consume a time. ``script(target, "live")``
                                removes a script. Unknown behaviours and ``times < 1``
                                raise ValueError.
    ``outage(behaviour=DEFAULT_OUTAGE, **params)``
                                answer every valid request with ``behaviour`` (scripts
                                are neither used nor consumed) until ``outage(None)``;
                                ``outage()`` is the service's own 503 answer.

Records are appended on the loop thread (the recorder is ``simulators._recorder``);
``wait_for`` callers are woken at most once per ``WAKE_INTERVAL`` (5 ms) under load, and the
last record is never left unannounced.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from simulators._recorder import WAKE_INTERVAL, Record, Recorder, RecordsView

__all__ = ["DEFAULT_OUTAGE", "WAKE_INTERVAL", "Record", "RecordsView", "Script", "SimulatorBase"]

log = logging.getLogger(__name__)

DEFAULT_OUTAGE = "default"  # outage(): the simulator's own 503 behaviour
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

R = TypeVar("R", bound=Record)
T = TypeVar("T")  # how callers name a target (a token, a subscription, ...)


@dataclass
class Script:
    """A scripted behaviour; ``times`` answers left (None: until re-scripted)."""

    behaviour: str
    params: dict[str, Any] = field(default_factory=dict)
    times: int | None = None


class SimulatorBase(ABC, Generic[R, T]):
    """Lifecycle, recorder, scripts and outage of a simulator (see the module docstring).

    A subclass sets ``name``, ``behaviours`` and ``outage_default``, and implements
    :meth:`_listen`, :meth:`_close` and :meth:`_delivery_key`; its request handlers (on the
    loop thread) call :meth:`_take` for the behaviour and :meth:`_record` for the record.
    ``self._cond`` guards the records and scripts; a subclass may guard its own state with it.
    """

    name: ClassVar[str] = "simulator"
    behaviours: ClassVar[frozenset[str]] = frozenset({"live"})
    outage_default: ClassVar[tuple[str, Mapping[str, Any]]] = ("live", {})

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._recorder: Recorder[R] = Recorder(self.name, self._delivery_key, self._summary,
                                               self._timeout_detail)
        self._cond = self._recorder.cond  # an RLock
        self._records = self._recorder.items  # the live list (loop thread, or under _cond)
        self._scripts: dict[str, Script] = {}
        self._outage: Script | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- what a subclass provides ------------------------------------------------------
    @abstractmethod
    async def _listen(self, port: int) -> int:
        """Listen on 127.0.0.1:``port`` (0: any) on the running loop; return the port."""

    @abstractmethod
    async def _close(self) -> None:
        """Stop listening and abort every open connection."""

    @abstractmethod
    def _delivery_key(self, record: R) -> str | None:
        """The target a record delivered to, or None when it is not a delivery."""

    def _target_key(self, target: T) -> str:
        """The key of a caller's target in :meth:`deliveries_by_token`."""
        return str(target)

    def _script_key(self, target: T) -> str:
        """The key of a caller's target in the scripts (what handlers pass to ``_take``)."""
        return self._target_key(target)

    def _check_script(self, behaviour: str, params: dict[str, Any]) -> None:
        """Validate (or complete, in place) a behaviour's params; raise ValueError."""

    def _summary(self, record: R) -> object:
        """A record as a wait_for TimeoutError shows it (no secrets)."""
        return record.status

    def _timeout_detail(self) -> str:
        """Extra text for a wait_for TimeoutError."""
        return ""

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> Self:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        slug = self.name.lower().replace(" ", "")
        thread = threading.Thread(target=_run_loop, args=(loop,), name=f"{slug}-sim", daemon=True)
        thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._listen(self.port), loop).result(START_TIMEOUT)
        except BaseException:
            _end_loop(loop, thread)
            raise
        self.port = port
        self._loop, self._thread = loop, thread
        log.info("%s simulator listening on %s", self.name, self.base_url)
        return self

    def stop(self) -> None:
        """Close the listener and abort every connection; keep records and scripts."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT)
        finally:
            _end_loop(loop, thread)
            self._recorder.wake()  # a deferred wake-up may have died with the loop

    async def _shutdown(self) -> None:
        await self._close()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def restart(self) -> Self:
        """Drop every connection and listen again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- recorder (any thread) ---------------------------------------------------------
    @property
    def records(self) -> list[R]:
        """Every request, in the order recorded, with what was answered."""
        return self._recorder.snapshot()

    def delivered(self) -> list[R]:
        """The records of requests the service accepted."""
        return self._recorder.delivered()

    def deliveries_by_token(self) -> dict[str, int]:
        """Target -> number of accepted requests (a count above 1 is a duplicate)."""
        return self._recorder.counts()

    def delivered_count(self, target: T | None = None) -> int:
        """Accepted requests for ``target``, or in total when None. O(1)."""
        return self._recorder.count(None if target is None else self._target_key(target))

    def wait_delivered(self, count: int, timeout: float = 10.0) -> float:
        """Block until ``count`` requests in all have been accepted (TimeoutError after
        ``timeout``); returns the time it saw the last (epoch seconds)."""
        self.wait_for(lambda _: self.delivered_count() >= count, timeout)
        return time.time()

    def unique_deliveries(self) -> int:
        """Targets accepted at least once."""
        return len(self.deliveries_by_token())

    def wait_for(self, predicate: Callable[[Sequence[R]], bool], timeout: float = 10.0) -> list[R]:
        """Block until ``predicate(records)`` holds; return a snapshot of the records.

        ``records`` is a read-only live view, evaluated under the lock; copy it to keep it.
        Raises TimeoutError (with a summary of what arrived) after ``timeout`` seconds.
        """
        return self._recorder.wait_for(predicate, timeout)

    def reset(self) -> None:
        """Forget records, scripts and the outage."""
        with self._cond:
            self._recorder.clear()
            self._scripts.clear()
            self._outage = None

    def _record(self, record: R) -> int:
        """Record a request (loop thread); returns its index in ``records``."""
        return self._recorder.append(record)

    def _replace(self, index: int, record: R) -> None:
        """Overwrite the record at ``index`` (its answer changed; loop thread)."""
        self._recorder.replace(index, record)

    def _notify(self) -> None:
        """Wake ``wait_for`` callers after a change outside the records."""
        self._recorder.notify()

    # -- scripts -----------------------------------------------------------------------
    def script(self, target: T, behaviour: str, *, times: int | None = None, **params: Any) -> None:
        """Answer ``target``'s valid requests with ``behaviour``; ``times=N``: N answers."""
        script = self._new_script(behaviour, times, params)
        key = self._script_key(target)
        with self._cond:
            if behaviour == "live" and times is None:
                self._scripts.pop(key, None)
            else:
                self._scripts[key] = script

    def outage(self, behaviour: str | None = DEFAULT_OUTAGE, **params: Any) -> None:
        """Answer every valid request with ``behaviour`` until ``outage(None)``;
        ``outage()`` is the service's own 503 (``outage_default``)."""
        script = None
        if behaviour == DEFAULT_OUTAGE:
            behaviour, defaults = self.outage_default
            params = {**defaults, **params}
        if behaviour is not None:
            script = self._new_script(behaviour, None, params)
        with self._cond:
            self._outage = script

    def _new_script(self, behaviour: str, times: int | None, params: dict[str, Any]) -> Script:
        if behaviour not in self.behaviours:
            raise ValueError(f"unknown {self.name} behaviour {behaviour!r}; "
                             f"expected one of {sorted(self.behaviours)}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 (or None for 'until re-scripted')")
        params = dict(params)
        self._check_script(behaviour, params)
        return Script(behaviour, params, times)

    def _take(self, key: str) -> Script:
        """The behaviour for a valid request to ``key``: the outage, else its script
        (one of its ``times`` consumed), else live."""
        with self._cond:
            if self._outage is not None:
                return self._outage
            script = self._scripts.get(key)
            if script is None:
                return Script("live")
            if script.times is not None:
                script.times -= 1
                if script.times <= 0:
                    del self._scripts[key]
            return script

    def _scripted(self, key: str) -> Script | None:
        """``key``'s script, without consuming it."""
        with self._cond:
            return self._scripts.get(key)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()
    loop.run_until_complete(loop.shutdown_asyncgens())


def _end_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(STOP_TIMEOUT)
    if thread.is_alive():
        log.warning("simulator thread %s did not stop; its loop is left open", thread.name)
        return
    loop.close()
