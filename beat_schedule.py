"""Periodic jobs run by ``celery -A workers beat``. A schedule only: the tasks live in workers.

Run one beat. A second one started by mistake doubles nothing: each job starts at most
once per tick (``periodic_runs``, through ``start_periodic``) and never overlaps itself
(a PostgreSQL advisory lock). Beat is not optional: retries and recovery wait for
``resume_owed``.
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
        "resume-owed": {
            "task": "notifier.resume_owed",
            "schedule": float(settings.resume_interval),  # NOTIFIER_RESUME_INTERVAL, default 10 s
            # a tick nobody ran in time is dropped: the next one does the same work
            "options": {"queue": "maintenance", "expires": float(settings.resume_interval)},
        },
        "purge-outcomes": {
            "task": "notifier.purge_outcomes",
            "schedule": float(settings.purge_interval),  # NOTIFIER_PURGE_INTERVAL, default 3600 s
            "options": {"queue": "maintenance", "expires": float(settings.purge_interval)},
        },
    }
