"""Periodic jobs run by ``celery -A workers beat``. A schedule only: the tasks live in workers.

Run exactly one beat. A second one would only dispatch the sweep twice, which is safe
(two sweeps at once remove what one would), but wasteful.
"""

from notifier.config import Settings

beat_schedule: dict[str, dict[str, object]] = {
    "sweep-stale-tokens": {
        "task": "notifier.sweep_stale_tokens",
        # NOTIFIER_SWEEP_INTERVAL seconds, default 600
        "schedule": float(Settings.from_env().sweep_interval),
        "options": {"queue": "maintenance", "expires": 300},
    },
}
