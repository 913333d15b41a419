"""Periodic jobs run by ``celery -A workers beat``. A schedule only: the tasks live in workers.

Empty until the stale-token sweep lands (see the README's roadmap).
"""

beat_schedule: dict[str, dict[str, object]] = {}
