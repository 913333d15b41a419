"""The runtime: the Celery app, queues, routing and the tasks that call into ``notifier``."""

from workers.celery import app
from workers.tasks import notify

__all__ = ["app", "notify"]
