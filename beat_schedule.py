"""Periodic jobs run by ``celery -A workers beat``. A schedule only: the tasks live in workers.

Run exactly one beat. A second one would only dispatch the sweep twice, which is safe
(two sweeps at once remove what one would), but wasteful.
"""

from __future__ import annotations

from typing import Any

from notifier.config import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The schedule for these settings; ``workers.celery`` asks for it when Celery configures."""
    return {
        "sweep-stale-tokens": {
            "task": "notifier.sweep_stale_tokens",
            "schedule": float(settings.sweep_interval),  # NOTIFIER_SWEEP_INTERVAL, default 600 s
            "options": {"queue": "maintenance", "expires": 300},
        },
    }
