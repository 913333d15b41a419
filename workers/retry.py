"""The one retry policy: outcomes -> the statuses to record now, and a countdown for the rest.

What each outcome records is ``feedback.FEEDBACK``'s; this module adds only the attempt
limit and the backoff: exponential with full jitter, never sooner than the provider's
Retry-After, and capped far below the broker's visibility timeout (Redis re-delivers an
unacknowledged countdown task after it). The TTL bound is enforced by the store: a
retried batch past its notification's TTL is marked expired, never sent late.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from notifier.feedback import Result, feedback
from notifier.model import Device
from notifier.outcomes import MessageRejected, Outcome, RetryAfter
from notifier.store import PROVIDER_TARGET_DEVICE

BASE_DELAY = 2.0  # seconds before the first retry, before jitter
MAX_DELAY = 300.0  # five minutes: well under the one-hour visibility timeout


@dataclass(frozen=True, slots=True)
class Decision:
    results: list[Result]
    countdown: float | None  # None: nothing left to retry


def backoff(attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2^attempt))."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** max(0, attempt - 1))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_DELAY))
    return delay


def decide(
    devices: Sequence[Device], outcomes: Sequence[Outcome], attempts: Mapping[int, int], max_attempts: int
) -> Decision:
    if len(devices) != len(outcomes):
        raise AssertionError(f"channel returned {len(outcomes)} outcomes for {len(devices)} devices")
    results: list[Result] = []
    countdown: float | None = None
    for device, outcome in zip(devices, outcomes, strict=True):
        fb = feedback(outcome)
        if isinstance(outcome, RetryAfter):
            tries = attempts.get(device.id, 1)
            if tries >= max_attempts:
                results.append(Result(device, MessageRejected(f"gave up after {tries} attempts: {outcome.reason}",
                                                              outcome.status), "failed"))
                continue
            delay = backoff(tries, outcome.seconds)
            countdown = delay if countdown is None else max(countdown, delay)
        status = fb.target_status if device.id == PROVIDER_TARGET_DEVICE else fb.status
        results.append(Result(device, outcome, status))
    return Decision(results, countdown)


__all__ = ["Decision", "backoff", "decide"]
