"""The circuit breaker's state machine, on fakeredis."""

import fakeredis
import pytest

from notifier.outcomes import DeadToken, Delivered, RetryAfter
from workers import breaker as b

COOLDOWN = 30.0


@pytest.fixture
def brk() -> b.Breaker:
    return b.Breaker(fakeredis.FakeRedis(), "app", "webpush", COOLDOWN)


OUTAGE = [RetryAfter(None, "503", 503)] * 20
FINE = [Delivered()] * 20


def test_an_outage_opens_it_and_parks_batches(brk: b.Breaker) -> None:
    first = brk.admit()
    assert first.send and not first.probe
    brk.observe(OUTAGE, first)
    parked = brk.admit()
    assert not parked.send and 29 < parked.wait <= 30


def test_throttling_and_token_errors_never_trip_it(brk: b.Breaker) -> None:
    brk.observe([RetryAfter(5.0, "429", 429)] * 20 + [DeadToken("410", 410)] * 20, brk.admit())
    assert brk.admit().send


def test_a_probe_after_the_cooldown_closes_or_reopens_for_longer(brk: b.Breaker, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(b.time, "time", lambda: clock[0])
    brk.observe(OUTAGE, brk.admit())
    clock[0] += 31
    probe = brk.admit()
    assert probe.send and probe.probe
    assert not brk.admit().send  # one probe at a time
    brk.observe(OUTAGE, probe)  # still down: open again, twice as long
    assert 59 < brk.admit().wait <= 60
    clock[0] += 61
    probe = brk.admit()
    brk.observe(FINE, probe)
    assert brk.admit() == b.Admission(send=True)


def test_a_few_failures_in_a_big_batch_are_not_an_outage(brk: b.Breaker) -> None:
    brk.observe([RetryAfter(None, "timeout")] * 5 + [Delivered()] * 95, brk.admit())
    assert brk.admit().send


def test_it_fails_open_when_redis_is_unreachable() -> None:
    import redis

    unreachable = b.Breaker(redis.Redis(port=1, socket_connect_timeout=0.5), "app", "apns", COOLDOWN)
    admission = unreachable.admit()
    assert admission.send  # a breaker that cannot be read must not stop delivery
    unreachable.observe(OUTAGE, admission)  # nor fail the batch that observed an outage
