"""Beat that runs once: a second beat process started by mistake doubles no periodic job."""

from __future__ import annotations

from typing import Any

from harness.worker import BeatProcess
from tests.integration.conftest import ENV, wait_until


def _resume_runs(store: Any) -> tuple[int, int, float]:
    with store.pool.connection() as conn:
        row = conn.execute("SELECT runs, skipped, extract(epoch FROM last_started) FROM periodic_runs"
                           " WHERE job = 'resume'").fetchone()
    return (int(row[0]), int(row[1]), float(row[2])) if row else (0, 0, 0.0)


def test_two_beats_run_each_tick_once(worker: Any, store: Any) -> None:
    """The session's worker already has its beat; a second one dispatches every tick again.
    The resumer (every NOTIFIER_RESUME_INTERVAL, 1 s here) still starts at most once per
    90 % of an interval — two beats without the guard start it about twice an interval —
    and the second beat's dispatches are counted as skipped."""
    interval = float(ENV["NOTIFIER_RESUME_INTERVAL"])
    runs0, skipped0, started0 = wait_until(lambda: (r := _resume_runs(store))[0] and r, what="a first resume run")
    second = BeatProcess(dict(ENV)).start()
    try:
        runs, skipped, started = wait_until(
            lambda: (r := _resume_runs(store))[0] - runs0 >= 10 and r[1] - skipped0 >= 5 and r,
            timeout=60, what="ten more runs, and five dispatches skipped")
    finally:
        second.stop()
    assert started - started0 >= (runs - runs0) * 0.9 * interval - 0.05, (runs - runs0, started - started0)
