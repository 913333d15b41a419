"""The circuit breaker against a real outage: workers stop hammering, a probe reopens."""

from __future__ import annotations

from typing import Any

import redis

from notifier import register_device
from tests.integration.conftest import ENV, wait_until
from workers import notify

APP = "testapp"
KEY = "notifier:breaker:webpush:testapp"


def test_an_outage_parks_retries_and_a_probe_reopens_the_flow(webpush: Any, worker: Any, settled: Any) -> None:
    subs = [webpush.subscribe() for _ in range(300)]
    for i, sub in enumerate(subs):
        register_device(APP, f"b{i}", "webpush", sub)
    r = redis.Redis.from_url(ENV["REDIS_URL"])
    r.delete(KEY, KEY + ":probe")
    webpush.outage()
    nid = notify.delay(APP, [f"b{i}" for i in range(300)], title="t").id
    wait_until(lambda: r.exists(KEY), what="the breaker to open")
    # a probe after the 2 s cooldown meets the outage too: open again, for 4 s
    wait_until(lambda: float(r.hget(KEY, "cooldown") or 0) >= 4, timeout=30, what="a failed probe")
    during = len(webpush.records)
    webpush.outage(None)
    st = settled(nid, timeout=120)
    assert st.counts == {"delivered": 300}
    assert sorted(webpush.deliveries_by_token().values()) == [1] * 300
    # Without the breaker every one of the 300 devices is tried, and retried, during the
    # outage; with it, the batches before the trip and one probe are.
    print(f"requests to the provider during the outage: {during} (300 devices)")
    assert during < 300, during
    assert not r.exists(KEY)  # closed by the probe that went through
    r.close()
