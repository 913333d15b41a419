"""Regression tests for the aioapns defects that ``notifier.apns_protocol`` fixes, one per
defect, driving ``ApnsChannel`` directly against the APNs simulator (no Celery needed).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Coroutine, Iterator, TypeVar

import pytest

from notifier.apns import ApnsChannel
from notifier.config import ApnsApp
from notifier.checks import build_notification
from notifier.model import Device, Platform
from notifier.outcomes import DeadToken, Delivered, RetryAfter
from simulators.proxy import ConnectProxy
from simulators.tls import ca_path
from tests.integration.conftest import APNS_KEY_ID, APNS_TEAM, APNS_TOPIC, KEYS

T = TypeVar("T")
TIMEOUT = 1.0
NOTE = build_notification(title="t", body="b")


class Harness:
    """A channel on its own event loop, as a worker process would hold it."""

    def __init__(self, apns: Any, *, proxy: tuple[str, int] | None = None, connections: int = 1) -> None:
        self.apns = apns
        self.opened_before = apns.connections_opened
        self.loop = asyncio.new_event_loop()
        cfg = ApnsApp(topic=APNS_TOPIC, key_file=Path("unused"), key_id=APNS_KEY_ID, team_id=APNS_TEAM,
                      endpoint=apns.base_url, proxy=proxy)
        self.channel = ApnsChannel("testapp", cfg, key_pem=KEYS["apns"], timeout=TIMEOUT, max_in_flight=100,
                                   ca_bundle=ca_path(), connections=connections)
        self._ids = iter(range(1, 10**9))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def send(self, tokens: list[str]) -> list[Any]:
        devices = [Device(next(self._ids), "testapp", Platform.APNS, t) for t in tokens]
        return self.run(self.channel.send(NOTE, devices))

    def opened(self) -> int:
        """TLS connections the simulator saw from this channel."""
        return int(self.apns.connections_opened - self.opened_before)

    def connections(self) -> list[Any]:
        pool = self.channel._pool
        return list(pool.connections) if pool is not None else []

    def close(self) -> None:
        self.run(self.channel.close())
        self.loop.run_until_complete(asyncio.sleep(0))  # let transports finish closing
        self.loop.close()


@pytest.fixture
def harness(apns: Any) -> Iterator[Harness]:
    h = Harness(apns)
    yield h
    h.close()


def tokens(n: int) -> list[str]:
    return [os.urandom(32).hex() for _ in range(n)]


def test_a_five_thousand_unregistered_do_not_stall_the_connection(apns: Any, harness: Harness) -> None:
    dead = tokens(5000)
    for t in dead:
        apns.script(t, "dead")
    outcomes = harness.send(dead)
    assert all(isinstance(o, DeadToken) for o in outcomes), {type(o).__name__ for o in outcomes}
    (live,) = tokens(1)
    assert harness.send([live]) == [Delivered(200)]
    assert harness.opened() == 1  # all of it on one connection, never re-opened
    assert apns.pending_bodies == 0  # the simulator never had to hold an answer back


def test_b_answered_streams_are_forgotten(apns: Any, harness: Harness) -> None:
    batch = tokens(300)
    for t in batch[::3]:
        apns.script(t, "dead")
    harness.send(batch)
    (conn,) = harness.connections()
    assert (conn.request_streams, conn.requests, conn.request_statuses, conn._timers) == ({}, {}, {}, {})


@pytest.mark.parametrize("behaviour, status", [("silent", None), ("reset", None), ("empty_error", 500)])
def test_c_no_send_waits_past_its_timeout(apns: Any, harness: Harness, behaviour: str, status: int | None) -> None:
    stuck, live = tokens(2)
    apns.script(stuck, behaviour)
    started = time.monotonic()
    first, second = harness.send([stuck, live])
    elapsed = time.monotonic() - started
    assert isinstance(first, RetryAfter) and first.status == status, first
    assert second == Delivered(200)
    assert elapsed < TIMEOUT + 1.0, elapsed  # bounded by the stream timeout, not forever
    (conn,) = harness.connections()  # the slot came back: the connection still takes sends
    assert harness.send(tokens(3)) == [Delivered(200)] * 3
    assert conn.request_streams == {} and harness.opened() == 1


def test_d_empty_data_frame_after_200_keeps_the_connection(apns: Any, harness: Harness) -> None:
    batch = tokens(20)
    for t in batch:
        apns.script(t, "empty_data_200")
    assert harness.send(batch) == [Delivered(200)] * 20
    assert harness.send(tokens(5)) == [Delivered(200)] * 5
    assert harness.opened() == 1


def test_e_sends_through_a_connect_proxy(apns: Any) -> None:
    with ConnectProxy() as proxy:
        h = Harness(apns, proxy=("127.0.0.1", proxy.port))
        try:
            live = tokens(3)
            assert h.send(live) == [Delivered(200)] * 3
        finally:
            h.close()
        assert proxy.targets == [f"127.0.0.1:{apns.port}"]
    assert apns.deliveries_by_token() == {t: 1 for t in live}


def test_f_connection_lost_under_load_reconnects(apns: Any, harness: Harness) -> None:
    stuck = tokens(5)
    for t in stuck:
        apns.script(t, "silent")

    async def restart_once_all_arrived() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: apns.wait_for(lambda r: sum(x.token in stuck for x in r) >= 5))
        await loop.run_in_executor(None, apns.restart)

    async def both() -> list[Any]:
        devices = [Device(i, "testapp", Platform.APNS, t) for i, t in enumerate(stuck)]
        return await asyncio.gather(harness.channel.send(NOTE, devices), restart_once_all_arrived())

    outcomes, _ = harness.run(both())
    assert all(isinstance(o, RetryAfter) for o in outcomes)
    assert harness.send(tokens(3)) == [Delivered(200)] * 3  # the pool reconnects instead of spinning


def test_g_stream_limit_changes_keep_the_count_right(apns: Any, harness: Harness) -> None:
    # Every rejection makes the simulator drop to one stream, every success raise it to
    # 1000 again, as APNs does; aioapns's own counter wedges the connection after a few.
    for _ in range(3):
        batch = tokens(200)
        for t in batch[::2]:
            apns.script(t, "dead")
        outcomes = harness.send(batch)
        assert [type(o) for o in outcomes] == [DeadToken, Delivered] * 100
    (conn,) = harness.connections()
    assert not conn.free_channels.is_busy and conn.free_channels._in_flight == 0
