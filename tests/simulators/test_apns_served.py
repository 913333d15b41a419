"""The served APNs simulator (Granian: hyper's HTTP/2, rustls) checks what ApnsSimulator
checks, over the wire, from aioapns and from a raw h2 client."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from aioapns import NotificationRequest

from harness.bench import cpu_seconds
from simulators import tls
from simulators.apns import ApnsSimulator, generate_signing_key
from simulators.apns_served import ServedApnsSimulator
from tests.simulators.h2probe import opening_settings
from tests.simulators.test_apns_sim import KID, PRIVATE_PEM, PUBLIC_PEM, TEAM, RawClient, apns_client, token


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApnsSimulator]:
    with ServedApnsSimulator(TEAM, {KID: PUBLIC_PEM}) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _fresh(served: ServedApnsSimulator) -> None:
    served.reset()


def _send(served: ServedApnsSimulator, tokens: list[str], key_pem: str = PRIVATE_PEM,
          message: dict[str, object] | None = None) -> list[tuple[str, str | None, str]]:
    async def scenario() -> list[tuple[str, str | None, str]]:
        async with apns_client(served, key_pem) as (client, _):  # type: ignore[arg-type]
            results = await asyncio.gather(*(client.send_notification(NotificationRequest(
                device_token=t, message=message or {"aps": {"alert": "hi"}})) for t in tokens))
        return [(r.status, r.description, r.notification_id) for r in results]

    return asyncio.run(scenario())


def test_valid_notifications_get_200_and_are_counted_once_each(served: ServedApnsSimulator) -> None:
    started = time.time()
    answers = _send(served, [token(1), token(2), token(3)])
    assert [(status, reason) for status, reason, _ in answers] == [("200", None)] * 3
    assert served.stats() == {"delivered": 3}
    assert started <= served.wait_delivered(3) <= time.time()  # when the last 200 was answered
    _send(served, [token(2)])
    assert served.stats() == {"delivered": 3, "repeated": 1}
    assert served.delivered_count() == 4 and served.unique_deliveries() == 3
    served.reset()
    assert served.stats() == {} and served.delivered_count() == 0


def test_invalid_notifications_get_apples_status_and_reason(served: ServedApnsSimulator) -> None:
    other_key, _ = generate_signing_key()
    assert _send(served, ["not-a-token"])[0][:2] == ("400", "BadDeviceToken")
    assert _send(served, [token(4)], key_pem=other_key)[0][:2] == ("403", "InvalidProviderToken")
    assert _send(served, [token(5)], message={"aps": {"alert": "x" * 5000}})[0][:2] == ("413", "PayloadTooLarge")
    assert served.stats() == {"BadDeviceToken": 1, "InvalidProviderToken": 1, "PayloadTooLarge": 1}


def test_it_advertises_apns_stream_limit_over_h2(served: ServedApnsSimulator) -> None:
    raw = RawClient(served.port)
    try:
        raw.pump_until(lambda: bool(raw.max_streams))
        assert raw.max_streams == [1000]
        assert raw.response(raw.post(f"/3/device/{token(6)}"))["status"] == 200
    finally:
        raw.close()
    assert served.stats() == {"delivered": 1}


def test_http_1_1_is_refused(served: ServedApnsSimulator) -> None:
    request = urllib.request.Request(f"{served.base_url}/3/device/{token(7)}", data=b'{"aps":{}}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, context=tls.client_context(), timeout=10)
    assert caught.value.code == 505
    assert served.stats() == {}


def test_a_query_string_is_part_of_the_token_as_for_apns_simulator(served: ServedApnsSimulator) -> None:
    with ApnsSimulator(TEAM, {KID: PUBLIC_PEM}) as h2sim:
        for port in (served.port, h2sim.port):
            raw = RawClient(port)
            try:
                answer = raw.response(raw.post(f"/3/device/{token(8)}?x=1"))
            finally:
                raw.close()
            assert (answer["status"], answer["body"]) == (400, b'{"reason":"BadDeviceToken"}'), port
    assert served.stats() == {"BadDeviceToken": 1}


def test_its_http2_settings_are_apns_simulators(served: ServedApnsSimulator) -> None:
    with ApnsSimulator(TEAM, {KID: PUBLIC_PEM}) as h2sim:
        expected = opening_settings(h2sim.port)
    assert expected == (1000, 65_535, 8000, 65_535)
    assert opening_settings(served.port) == expected


def test_the_bench_counts_its_processes_cpu_as_the_simulators(served: ServedApnsSimulator) -> None:
    with_it, without = cpu_seconds({}, {"apns": served}), cpu_seconds({}, {})
    _send(served, [token(n) for n in range(1000, 3000)])
    used = (cpu_seconds({}, {"apns": served})["simulators"] - with_it["simulators"]
            - (cpu_seconds({}, {})["simulators"] - without["simulators"]))
    assert used > 0.02, used  # Granian's two processes answered 2,000 requests
