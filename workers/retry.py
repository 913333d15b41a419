"""The one retry policy: outcomes -> the statuses to record, and when each retry is due.

What each outcome records is ``feedback.FEEDBACK``'s; this module adds only the attempt
limit and the backoff: exponential with full jitter, never sooner than the provider's
Retry-After, at most five minutes. A retry waits in PostgreSQL (``deliveries.due_at``)
and the resumer dispatches it when due; nothing waits in the broker. The TTL bound is
the store's: a retry past its notification's TTL is marked expired, never sent late, and
one within it carries only the TTL that remains.
"""

from __future__ import annotations

import random
from collections.abc import Container, Mapping, Sequence

from notifier.feedback import Result, feedback
from notifier.model import Device
from notifier.outcomes import MessageRejected, Outcome, RetryAfter
from notifier.store import PROVIDER_TARGET_DEVICE

BASE_DELAY = 2.0  # seconds before the first retry, before jitter
MAX_DELAY = 300.0  # five minutes: the most our own backoff waits between two attempts


def backoff(attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2^attempt)); a
    provider's Retry-After is honoured exactly, however long (past the TTL the device
    is then expired, never sent late)."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** min(max(0, attempt - 1), 30))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def decide(
    devices: Sequence[Device], outcomes: Sequence[Outcome], attempts: Mapping[int, int], max_attempts: int,
    window_closed: Container[int] = (), remaining: float = float("inf"),
) -> list[Result]:
    """The result to record for each device: ``feedback``'s status, and for a retry the
    seconds until it is due; 'failed' once its retry window closed (``window_closed``) or
    the attempts are spent; 'expired' when the retry would come after the TTL
    (``remaining`` seconds of it were left at the claim)."""
    if len(devices) != len(outcomes):
        raise AssertionError(f"channel returned {len(outcomes)} outcomes for {len(devices)} devices")
    results: list[Result] = []
    for device, outcome in zip(devices, outcomes, strict=True):
        fb = feedback(outcome)
        status = fb.target_status if device.id == PROVIDER_TARGET_DEVICE else fb.status
        if isinstance(outcome, RetryAfter):
            tries = attempts.get(device.id, 1)
            window_open = device.id not in window_closed
            if tries >= max_attempts or not window_open:
                why = f"{tries} attempts" if window_open else f"{tries} attempts and the retry window"
                gave_up = MessageRejected(f"gave up after {why}: {outcome.reason}", outcome.status)
                results.append(Result(device, gave_up, "failed"))
            elif (delay := backoff(tries, outcome.seconds)) >= remaining:  # due after the TTL: never sent late
                results.append(Result(device, outcome, "expired"))
            else:
                results.append(Result(device, outcome, status, delay))
            continue
        results.append(Result(device, outcome, status))
    return results


__all__ = ["backoff", "decide"]
