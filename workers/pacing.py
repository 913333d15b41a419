"""A broadcast's fan-out keeps pace with its channel pools.

The fan-out writes a page of delivery rows and dispatches it only while fewer than
``NOTIFIER_FANOUT_AHEAD`` batches wait in that channel's queue. Dispatched far ahead, a
million-device broadcast's rows would wait in the broker for minutes: past the dispatch
grace the resumer presumes their tasks lost and dispatches them again (a rewrite of every
row, and tasks that find nothing to claim), and the broker holds the whole broadcast.

A queue nothing takes from (no pool consumes it, or it is wedged) stops being waited for
after the dispatch grace: the rest of the broadcast goes out as before, and the resumer
dispatches those rows again until a pool comes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workers.celery import waiting

log = logging.getLogger(__name__)

# Seconds between two looks at a full queue, and between two renewals of the fan-out's lease.
LOOK_EVERY = 0.2
RENEW_EVERY = 5.0


class Pacer:
    def __init__(self, ahead: int, patience: float, renew: Callable[[], bool]) -> None:
        self.ahead, self.patience, self.renew = ahead, patience, renew
        self.unpaced: set[str] = set()  # queues nothing took from for ``patience`` seconds
        self.waited = 0.0  # seconds this fan-out spent waiting for room

    def room(self, queue: str) -> bool:
        """Wait until fewer than ``ahead`` batches wait in ``queue``; False when the
        fan-out lost its lease meanwhile (it must stop)."""
        if queue in self.unpaced or (depth := waiting(queue)) < self.ahead:
            return True
        started = shrank = renewed = time.monotonic()
        lowest = depth
        try:
            while depth >= self.ahead:
                now = time.monotonic()
                if now - shrank > self.patience:
                    log.warning("queue %s: no batch taken for %.0f s (%d waiting); the fan-out stops waiting for "
                                "it: is its pool running?", queue, now - shrank, depth)
                    self.unpaced.add(queue)
                    return True
                if now - renewed > RENEW_EVERY:
                    if not self.renew():
                        return False
                    renewed = now
                time.sleep(LOOK_EVERY)  # pacing against the queue, not synchronisation
                depth = waiting(queue)
                if depth < lowest:
                    lowest, shrank = depth, time.monotonic()
            return True
        finally:
            self.waited += time.monotonic() - started
