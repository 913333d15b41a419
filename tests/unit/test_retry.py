"""The retry policy: final statuses and countdowns."""

import random

from notifier.model import Device, Platform
from notifier.outcomes import CredentialFailure, DeadToken, Delivered, MessageRejected, RetryAfter, TokenMismatch
from notifier.store import PROVIDER_TARGET_DEVICE
from workers.retry import MAX_DELAY, backoff, decide


def dev(i: int) -> Device:
    return Device(i, "app", Platform.WEBPUSH, f"https://x.example/{i}")


def test_decide_statuses() -> None:
    outcomes = [Delivered(), DeadToken("410", 410), MessageRejected("413"), CredentialFailure("app", "403"),
                RetryAfter(3.0, "429", 429), TokenMismatch("app", "400 DeviceTokenNotForTopic", 400)]
    d = decide([dev(i) for i in range(1, 7)], outcomes, {i: 1 for i in range(1, 7)}, max_attempts=5)
    assert [r.status for r in d] == ["delivered", "dead", "failed", "failed", "retrying", "failed"]
    assert d[4].due_in >= 3.0  # never sooner than Retry-After
    assert all(r.due_in == 0 for r in d if r.status != "retrying")


def test_gives_up_after_max_attempts() -> None:
    d = decide([dev(1)], [RetryAfter(None, "503", 503)], {1: 5}, max_attempts=5)
    assert d[0].status == "failed" and "gave up after 5" in d[0].outcome.reason


def test_a_provider_target_is_never_dead() -> None:
    """An FCM topic has no token: a dead-token answer about it is a verdict on the message."""
    d = decide([dev(PROVIDER_TARGET_DEVICE)], [DeadToken("404 UNREGISTERED", 404)], {}, max_attempts=5)
    assert d[0].status == "failed"


def test_backoff_is_bounded_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff(a, None, rng) for a in range(1, 30)]
    assert all(0 <= x <= MAX_DELAY for x in delays)
    assert len(set(delays)) > 20
    assert backoff(1, 10_000.0) == MAX_DELAY
