"""One channel batch, recorded as it goes.

The channel sends on the process's event loop and reports each device's outcome the
moment it is known; this thread records them every ``FLUSH_EVERY`` seconds (and renews
the claim's lease every ``RENEW_EVERY``). A batch that crashes or times out has therefore written
every answer it got: what is sent again is at most what was in flight, never what was
answered. A device whose answer never came within the batch's budget is a retry.

Whatever ends the batch — its budget, a lost claim, an error in our code or the store —
cancels the sends still running: nothing goes out that nobody will record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta

from notifier import metrics
from notifier.channel import Channel
from notifier.feedback import Result, TokenEffect, feedback
from notifier.model import Device, Platform
from notifier.outcomes import Outcome, RetryAfter
from notifier.store import Claim
from workers.retry import decide
from workers.runtime import Runtime

log = logging.getLogger(__name__)

# Seconds between two writes of the outcomes that arrived meanwhile.
FLUSH_EVERY = 0.25
# The claim's lease; renewed a third of the way through, so only a dead or wedged batch
# loses it. Renewing rewrites every row still sending: on every flush (as before) it was
# most of what a batch cost PostgreSQL.
LEASE = timedelta(seconds=30)
RENEW_EVERY = LEASE.total_seconds() / 3


class Arrivals:
    """Outcomes reported on the loop thread, taken on the task's thread."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._new: list[tuple[int, Outcome]] = []
        self.outcomes: list[Outcome | None] = [None] * size

    def report(self, index: int, outcome: Outcome) -> None:
        with self._lock:
            if self.outcomes[index] is None:
                self.outcomes[index] = outcome
                self._new.append((index, outcome))

    def complete(self) -> bool:
        with self._lock:
            return all(o is not None for o in self.outcomes)

    def take(self) -> list[tuple[int, Outcome]]:
        with self._lock:
            new, self._new = self._new, []
        return new


def run_batch(rt: Runtime, channel: Channel, nid: str, claim: Claim, budget: float) -> list[Outcome]:
    """Send a claimed batch through ``channel``, recording outcomes as they arrive."""
    devices = claim.devices
    arrivals = Arrivals(len(devices))
    channel.slowest = 0.0
    started = time.monotonic()
    future = asyncio.run_coroutine_threadsafe(channel.send(claim.notification, devices, arrivals.report), rt.loop)
    deadline = time.monotonic() + budget
    renew_at = time.monotonic() + RENEW_EVERY
    try:
        while True:
            concurrent.futures.wait([future], timeout=FLUSH_EVERY)
            record(rt, nid, claim, [(devices[i], o) for i, o in arrivals.take()])
            if future.done():
                future.result()  # a bug in a channel raises here, after what was answered is recorded
                break
            if time.monotonic() > deadline:
                break
            if time.monotonic() < renew_at:
                continue
            renew_at = time.monotonic() + RENEW_EVERY
            if not rt.store.renew(nid, claim.claim_id, devices[0].id, devices[-1].id, LEASE):
                if not arrivals.complete():  # else every row is recorded: nothing was lost
                    log.warning("notification %s: the batch lost its claim; its sends stop", nid)
                break
    finally:
        if not future.done():
            future.cancel()  # each send cleans up after itself when cancelled
    for i, o in enumerate(arrivals.outcomes):
        if o is None:
            arrivals.report(i, RetryAfter(None, "batch timed out"))
    record(rt, nid, claim, [(devices[i], o) for i, o in arrivals.take()])
    outcomes = [o for o in arrivals.outcomes if o is not None]
    _log_batch(nid, claim, outcomes, channel.slowest, time.monotonic() - started)
    return outcomes


def _log_batch(nid: str, claim: Claim, outcomes: Sequence[Outcome], slowest: float, seconds: float) -> None:
    """One INFO line per batch; its fields are JSON fields too (NOTIFIER_LOG_FORMAT=json)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[type(o).__name__] = counts.get(type(o).__name__, 0) + 1
    fields = {"notification": nid, "channel": claim.devices[0].platform.value if claim.devices else "",
              "app": claim.app, "devices": len(claim.devices), "outcomes": counts,
              "slowest_answer_ms": round(slowest * 1000, 1), "seconds": round(seconds, 3)}
    log.info("batch %(notification)s %(channel)s app=%(app)s devices=%(devices)d outcomes=%(outcomes)s "
             "slowest answer %(slowest_answer_ms).1f ms, %(seconds).2f s", fields, extra={"batch": fields})


def record(rt: Runtime, nid: str, claim: Claim, answered: Sequence[tuple[Device, Outcome]]) -> None:
    if not answered:
        return
    results = decide([d for d, _ in answered], [o for _, o in answered], claim.attempts, rt.settings.max_attempts,
                     claim.window_closed, claim.remaining)
    written = rt.store.record(nid, claim.claim_id, results, durable=_durable(claim, results))
    if len(written) < len(results):
        log.warning("notification %s: %d outcomes not written, the claim was lost (taken over after it lapsed)",
                    nid, len(results) - len(written))
    platform = claim.devices[0].platform if claim.devices else Platform.FCM
    counted(claim.app, platform, written)
    alert(claim.app, platform, results)


def _durable(claim: Claim, results: Sequence[Result]) -> bool:
    """Whether outcomes must wait for the disk. A lane claim's need not (README, "Commits
    that do not wait for the disk"), unless one leaves work owed: a retry, whose flush
    keeps the notification's earlier commits with it, after its task was acknowledged. A
    notification with a category waits too: its fallback may be waiting for the outcome."""
    return claim.durable or claim.notification.category is not None or any(r.status == "retrying" for r in results)


def counted(app: str, platform: Platform, written: Sequence[Result]) -> None:
    """The metrics of outcomes written: sends by outcome, retries, verdicts on tokens."""
    metrics.recorded(app, platform.value, (r.status for r in written))
    for effect in (TokenEffect.DEAD, TokenEffect.HOLD):
        found = sum(1 for r in written if feedback(r.outcome).token is effect)
        metrics.verdicts(app, platform.value, effect.value, found)


def alert(app: str, platform: Platform, results: Sequence[Result]) -> None:
    """Log what ``feedback`` says an operator must act on, once per distinct reason."""
    alerts = {(type(r.outcome).__name__, getattr(r.outcome, "reason", "")) for r in results
              if feedback(r.outcome).alert}
    for kind, reason in sorted(alerts):
        log.error("operator action needed for app %s on %s: %s: %s", app, platform, kind, reason)
