"""The one retry policy: outcomes -> final statuses now, and a countdown for the rest.

Exponential backoff with full jitter, never sooner than the provider's Retry-After, and
capped far below the broker's visibility timeout (Redis re-delivers an unacknowledged
countdown task after it). The TTL bound is enforced by the store: a retried batch past
its notification's TTL is marked expired, never sent late.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from notifier.model import Device
from notifier.outcomes import DeadToken, Delivered, MessageRejected, Outcome, RetryAfter

BASE_DELAY = 2.0  # seconds before the first retry, before jitter
MAX_DELAY = 300.0  # five minutes: well under the one-hour visibility timeout


@dataclass(frozen=True, slots=True)
class Decision:
    results: list[tuple[Device, Outcome, str]]  # (device, outcome, status to record)
    countdown: float | None  # None: nothing left to retry


def backoff(attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2^attempt))."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** max(0, attempt - 1))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_DELAY))
    return delay


def decide(
    devices: Sequence[Device], outcomes: Sequence[Outcome], attempts: dict[int, int], max_attempts: int
) -> Decision:
    if len(devices) != len(outcomes):
        raise AssertionError(f"channel returned {len(outcomes)} outcomes for {len(devices)} devices")
    results: list[tuple[Device, Outcome, str]] = []
    countdown: float | None = None
    for device, outcome in zip(devices, outcomes):
        if isinstance(outcome, Delivered):
            results.append((device, outcome, "delivered"))
        elif isinstance(outcome, DeadToken):
            results.append((device, outcome, "dead"))
        elif isinstance(outcome, RetryAfter):
            tries = attempts.get(device.id, 1)
            if tries >= max_attempts:
                final = MessageRejected(f"gave up after {tries} attempts: {outcome.reason}", outcome.status)
                results.append((device, final, "failed"))
                continue
            results.append((device, outcome, "retrying"))
            delay = backoff(tries, outcome.seconds)
            countdown = delay if countdown is None else max(countdown, delay)
        else:  # MessageRejected, CredentialFailure: the token stays, the message is done
            results.append((device, outcome, "failed"))
    return Decision(results, countdown)


__all__ = ["Decision", "backoff", "decide"]
