"""A broadcast's fan-out keeps pace with its channel pools.

The fan-out pages each platform on its own cursor, and writes and dispatches a
platform's next page only while fewer than ``NOTIFIER_FANOUT_AHEAD`` batches wait in that
channel's queue. Dispatched far ahead, a million-device broadcast's rows would wait in
the broker for minutes: past the dispatch grace the resumer presumes their tasks lost
and dispatches them again (a rewrite of every row, and tasks that find nothing to claim),
and the broker holds the whole broadcast. One cursor for all platforms would hold the
fast channels to the pace of the slowest (a mixed broadcast ran at 0.54 of its ceiling
so, against 0.81 unpaced).

A queue nothing takes from (no pool consumes it, or it is wedged) stops being waited for
after the dispatch grace: the rest of the broadcast goes out as before, and the resumer
dispatches those rows again until a pool comes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from workers.celery import waiting

log = logging.getLogger(__name__)

# Seconds between two looks at queues that are all full.
LOOK_EVERY = 0.2


@dataclass
class _Queue:
    lowest: int  # the fewest batches seen waiting since it was last found full
    shrank: float  # when that was


class Pacer:
    """``ahead``: batches let wait in a queue (None: no pacing)."""

    def __init__(self, ahead: int | None, patience: float) -> None:
        self.ahead, self.patience = ahead, patience
        self.unpaced: set[str] = set()  # queues nothing took from for ``patience`` seconds
        self.waited = 0.0  # seconds the fan-out spent waiting for room
        self._full: dict[str, _Queue] = {}

    def rooms(self, queues: list[str]) -> bool:
        """True when each of ``queues`` has room (each is looked at, so each one's record
        of when it last shrank stays current)."""
        return all([self.room(q) for q in queues])

    def room(self, queue: str) -> bool:
        """True when fewer than ``ahead`` batches wait in ``queue`` (or it is not paced).
        Pacing fails open: a broker that does not answer the look is left to the publish
        (which retries for a minute) to find out about."""
        if self.ahead is None or queue in self.unpaced:
            return True
        try:
            depth = waiting(queue)
        except Exception as exc:  # redis or kombu, any way of not answering
            log.warning("queue %s: depth unknown (%s); dispatching without waiting", queue, type(exc).__name__)
            return True
        now = time.monotonic()
        if depth < self.ahead:
            self._full.pop(queue, None)
            return True
        seen = self._full.setdefault(queue, _Queue(depth, now))
        if depth < seen.lowest:
            seen.lowest, seen.shrank = depth, now
        elif now - seen.shrank > self.patience:
            log.warning("queue %s: no batch taken for %.0f s (%d waiting); the fan-out stops waiting for it: "
                        "is its pool running?", queue, now - seen.shrank, depth)
            self.unpaced.add(queue)
            return True
        return False

    def pause(self) -> None:
        """Every queue the fan-out feeds is full: wait a moment before looking again."""
        time.sleep(LOOK_EVERY)  # pacing against the queues, not synchronisation
        self.waited += LOOK_EVERY
