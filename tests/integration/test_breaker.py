"""The circuit breakers against real outages: workers stop hammering a push service that
is down, a probe reopens the flow, and one bad origin never pauses the others."""

from __future__ import annotations

from typing import Any

import redis

from notifier import register_device
from notifier.endpoints import origin_of
from tests.integration.conftest import ENV, wait_until
from workers import notify
from workers.breaker import PREFIX, TRIPPED, open_breakers, origin_breaker

APP = "testapp"


def breaker_of(sim: Any) -> str:
    return origin_breaker(origin_of(sim.base_url))


def test_an_outage_parks_retries_and_a_probe_reopens_the_flow(webpush: Any, worker: Any, settled: Any) -> None:
    subs = [webpush.subscribe() for _ in range(300)]
    for i, sub in enumerate(subs):
        register_device(APP, f"b{i}", "webpush", sub)
    r = redis.Redis.from_url(ENV["REDIS_URL"])
    name = breaker_of(webpush)
    webpush.outage()
    nid = notify.delay(APP, [f"b{i}" for i in range(300)], title="t").id
    wait_until(lambda: name in open_breakers(r), what="the breaker to open")
    # a probe after the 2 s cooldown meets the outage too: open again, for 4 s
    wait_until(lambda: float(r.hget(PREFIX + name, "cooldown") or 0) >= 4, timeout=30, what="a failed probe")
    during = len(webpush.records)
    webpush.outage(None)
    st = settled(nid, timeout=120)
    assert st.counts == {"delivered": 300}
    assert sorted(webpush.deliveries_by_token().values()) == [1] * 300
    # Without the breaker every one of the 300 devices is tried, and retried, during the
    # outage; with it, the batches before the trip and the probes are.
    print(f"requests to the provider during the outage: {during} (300 devices)")
    assert during < 300, during
    assert r.zscore(TRIPPED + "webpush", name) is None  # closed by the probe that went through
    r.close()


def test_one_hostile_origin_does_not_pause_the_others(webpush: Any, webpush2: Any, worker: Any, settled: Any,
                                                      store: Any) -> None:
    """Half the subscribers are on a push service that answers 503 to everything; the other
    half, interleaved with them in every batch, are delivered while it is still down."""
    healthy, hostile = [], []
    for i in range(150):
        healthy.append(webpush.subscribe())
        register_device(APP, f"h{i}", "webpush", healthy[-1])
        hostile.append(webpush2.subscribe())
        register_device(APP, f"x{i}", "webpush", hostile[-1])
    r = redis.Redis.from_url(ENV["REDIS_URL"])
    webpush2.outage()
    nid = notify.delay(APP, [u for i in range(150) for u in (f"h{i}", f"x{i}")], title="t").id
    wait_until(lambda: all(webpush.delivered_count(s) == 1 for s in healthy), timeout=30,
               what="every subscriber of the healthy push service")
    assert breaker_of(webpush2) in open_breakers(r) and breaker_of(webpush) not in open_breakers(r)
    during = len(webpush2.records)
    # Without a breaker per origin each of the 150 would have been tried by now; the
    # healthy origin's breaker never tripped, so its subscribers were never parked.
    print(f"requests to the hostile origin while the other was delivered: {during} (150 devices)")
    assert during < 150, during
    webpush2.outage(None)
    st = settled(nid, timeout=120)
    assert st.counts == {"delivered": 300}
    assert [webpush.delivered_count(s) for s in healthy] == [1] * 150
    assert [webpush2.delivered_count(s) for s in hostile] == [1] * 150
    r.close()
