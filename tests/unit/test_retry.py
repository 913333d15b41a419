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
    assert backoff(1, 10_000.0) == 10_000.0  # a Retry-After is honoured exactly, however long


def test_the_schedule_rides_out_a_half_hour_outage() -> None:
    """With the defaults, a device failing transiently is tried again and again until the
    retry window (an hour) closes, whatever the jitter draws: at least half an hour."""
    from notifier.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_WINDOW

    for seed in range(300):
        rng, elapsed, tries = random.Random(seed), 0.0, 1
        while tries < DEFAULT_MAX_ATTEMPTS and elapsed < DEFAULT_RETRY_WINDOW:  # decide()'s two limits
            elapsed += backoff(tries, None, rng)
            tries += 1
        assert elapsed >= 1800, f"seed {seed}: gave up after {elapsed:.0f}s and {tries} attempts"


def test_the_window_closes_retries() -> None:
    d = decide([dev(1)], [RetryAfter(None, "503", 503)], {1: 2}, max_attempts=50, window_closed={1})
    assert d[0].status == "failed" and "retry window" in d[0].outcome.reason


def test_a_retry_due_after_the_ttl_is_expired_not_parked() -> None:
    d = decide([dev(1)], [RetryAfter(3600.0, "429", 429)], {1: 1}, max_attempts=50, remaining=60.0)
    assert d[0].status == "expired"
    kept = decide([dev(1)], [RetryAfter(30.0, "429", 429)], {1: 1}, max_attempts=50, remaining=60.0)
    assert kept[0].status == "retrying" and kept[0].due_in >= 30.0
