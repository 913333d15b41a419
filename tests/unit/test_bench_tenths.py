"""``harness.bench.by_tenth``: a broadcast's rate over each tenth of its devices, from its
progress polls."""

from __future__ import annotations

import pytest

from harness.bench import by_tenth


def test_a_steady_broadcast_polled_at_every_tenth_has_one_rate() -> None:
    seen = [(0.0, 0)] + [(float(i), i * 100) for i in range(1, 11)]
    assert by_tenth(seen, 1000) == [100.0] * 10


def test_the_first_tenth_starts_at_notify_delay_not_at_the_first_empty_poll() -> None:
    # nothing done at 1 s and 2 s (the fan-out starting), then 100 devices a second
    seen = [(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 100), (12.0, 1000)]
    assert by_tenth(seen, 1000)[0] == pytest.approx(100 / 3, abs=0.05)  # rounded to 0.1
    assert by_tenth(seen, 1000)[1:] == [100.0] * 9


def test_tenths_between_polls_are_interpolated() -> None:
    # 500 devices in 5 s, then 500 more in 1 s
    assert by_tenth([(0.0, 0), (5.0, 500), (6.0, 1000)], 1000) == [100.0] * 5 + [500.0] * 5


def test_a_tenth_the_polls_never_saw_finish_is_none_not_zero() -> None:
    assert by_tenth([(0.0, 0), (4.0, 400)], 1000) == [100.0] * 4 + [None] * 6
