"""The circuit breakers' state machine, on fakeredis: a failure rate over a minimum of
sends in a sliding window, one breaker per provider and app or per push-service origin."""

import fakeredis
import pytest
import redis

from notifier.outcomes import DeadToken, Delivered, RetryAfter
from workers import breaker as b

COOLDOWN = 30.0
APNS = b.provider_breaker("apns", "app")
MOZILLA = b.origin_breaker("https://updates.push.services.mozilla.com")
GOOGLE = b.origin_breaker("https://fcm.googleapis.com")

OUTAGE = [RetryAfter(None, "503", 503)] * 20
FINE = [Delivered()] * 20


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1_000_000.0]
    monkeypatch.setattr(b.time, "time", lambda: now[0])
    return now


@pytest.fixture
def brk(clock) -> b.Breakers:
    return b.Breakers(fakeredis.FakeRedis(), COOLDOWN)


def test_one_failed_device_in_a_one_device_batch_never_trips_it(brk) -> None:
    for _ in range(3):
        brk.observe(APNS, [RetryAfter(None, "503", 503)])
    assert brk.tripped("apns") == {}


def test_twenty_sends_half_failing_trip_it_and_park_its_traffic(brk, clock) -> None:
    brk.observe(APNS, [RetryAfter(None, "503", 503)] * 10 + [Delivered()] * 10)
    tripped = brk.tripped("apns")
    assert tripped == {APNS: clock[0] + COOLDOWN}
    parked = brk.admit(APNS, tripped[APNS])
    assert not parked.send and parked.wait == COOLDOWN and parked.spread == COOLDOWN


def test_throttling_and_token_errors_never_trip_it(brk) -> None:
    brk.observe(APNS, [RetryAfter(5.0, "429", 429)] * 20 + [DeadToken("410", 410)] * 20)
    assert brk.tripped("apns") == {}


def test_failures_spread_over_small_batches_in_the_window_add_up(brk, clock) -> None:
    for _ in range(3):
        brk.observe(APNS, [RetryAfter(None, "timeout")] * 4 + [Delivered()])
        clock[0] += 5
    assert brk.tripped("apns") == {}  # 12 failures, but only 15 sends
    brk.observe(APNS, [RetryAfter(None, "timeout")] * 4 + [Delivered()])
    assert APNS in brk.tripped("apns")  # 16 of 20 in the window


def test_sends_older_than_the_window_are_forgotten(brk, clock) -> None:
    brk.observe(APNS, [RetryAfter(None, "503", 503)] * 15)
    clock[0] += b.WINDOW + b.BUCKET
    brk.observe(APNS, [RetryAfter(None, "503", 503)] * 10)
    assert brk.tripped("apns") == {}


def test_a_few_failures_in_many_sends_are_not_an_outage(brk) -> None:
    brk.observe(APNS, [RetryAfter(None, "timeout")] * 5 + [Delivered()] * 95)
    assert brk.tripped("apns") == {}


def test_each_push_service_origin_has_its_own_breaker(brk) -> None:
    brk.observe(MOZILLA, OUTAGE)
    brk.observe(GOOGLE, FINE)
    assert set(brk.tripped("webpush")) == {MOZILLA}
    assert brk.tripped("apns") == {}


def test_a_probe_after_the_cooldown_closes_or_reopens_for_longer(brk, clock) -> None:
    brk.observe(APNS, OUTAGE)
    clock[0] += COOLDOWN + 1
    probe = brk.admit(APNS, brk.tripped("apns")[APNS])
    assert probe.send and probe.probe
    other = brk.admit(APNS, brk.tripped("apns")[APNS])
    assert not other.send and other.wait == b.PROBE_WAIT  # one probe at a time
    brk.observe(APNS, OUTAGE[:10], probe)  # still down: open again, twice as long
    assert brk.tripped("apns")[APNS] == clock[0] + 2 * COOLDOWN
    clock[0] += 2 * COOLDOWN + 1
    probe = brk.admit(APNS, brk.tripped("apns")[APNS])
    brk.observe(APNS, FINE[:10], probe)
    assert brk.tripped("apns") == {}


def test_a_probe_that_sent_nothing_gives_its_turn_back(brk, clock) -> None:
    """A probe whose batch found nothing left to claim never reports: without giving its
    turn back, the next probe waited PROBE_TTL (a fault-suite run stayed down 2 minutes)."""
    brk.observe(APNS, OUTAGE)
    clock[0] += COOLDOWN + 1
    assert brk.admit(APNS, brk.tripped("apns")[APNS]).probe
    assert not brk.admit(APNS, brk.tripped("apns")[APNS]).send
    brk.release(APNS)
    assert brk.admit(APNS, brk.tripped("apns")[APNS]).probe


def test_open_breakers_lists_only_those_parking_now(brk, clock) -> None:
    brk.observe(MOZILLA, OUTAGE)
    assert b.open_breakers(brk._r) == [MOZILLA]
    clock[0] += COOLDOWN + 1  # half-open: the next probe decides
    assert b.open_breakers(brk._r) == []


def test_it_fails_open_when_redis_is_unreachable() -> None:
    unreachable = b.Breakers(redis.Redis(port=1, socket_connect_timeout=0.5), COOLDOWN)
    assert unreachable.tripped("apns") == {}  # a breaker that cannot be read must not stop delivery
    unreachable.observe(APNS, OUTAGE)  # nor fail the batch that observed an outage
