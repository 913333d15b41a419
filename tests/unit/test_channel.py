"""The send skeleton every channel shares (``notifier.channel.BaseChannel``), driven through a
minimal channel of its own kind: what a provider answers, or a bug about one device, is an
outcome for that device; the batch goes on."""

from __future__ import annotations

import asyncio
from typing import Self

from notifier.channel import BaseChannel
from notifier.checks import build_notification
from notifier.config import AppConfig, Settings
from notifier.model import Device, Notification, Platform
from notifier.outcomes import Delivered, Outcome, RetryAfter


class EchoChannel(BaseChannel[str, int]):
    """Answers 200 for every token but "bug", whose request cannot even be built."""

    platform = Platform.WEBPUSH

    @classmethod
    def from_config(cls, app: AppConfig, settings: Settings) -> Self:
        return cls(app.name, timeout=1.0, max_in_flight=2)

    def build(self, n: Notification, device: Device) -> str:
        if device.token == "bug":
            raise KeyError("a bug of ours")
        return device.token

    def classify(self, answer: int) -> Outcome:
        return Delivered(answer)

    async def _open(self) -> None:
        pass

    async def _transmit(self, request: str) -> int:
        if request == "slow":
            await asyncio.sleep(5)  # longer than the 1 s timeout: the skeleton times it out
        return 200


def test_a_bug_about_one_device_is_that_device_s_retry_and_the_batch_goes_on() -> None:
    devices = [Device(i, "app", Platform.WEBPUSH, t) for i, t in enumerate(["a", "bug", "slow", "b"])]
    reported: list[tuple[int, Outcome]] = []

    async def run() -> list[Outcome]:
        async with EchoChannel("app", timeout=1.0, max_in_flight=2) as channel:
            return await channel.send(build_notification(title="t"), devices, lambda i, o: reported.append((i, o)))

    outcomes = asyncio.run(run())
    assert [type(o) for o in outcomes] == [Delivered, RetryAfter, RetryAfter, Delivered]
    assert "internal error: KeyError" in outcomes[1].reason and "TimeoutError" in outcomes[2].reason
    assert sorted(i for i, _ in reported) == [0, 1, 2, 3]  # every outcome reported as it came
