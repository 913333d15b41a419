"""Fallbacks for critical notifications, dispatched by ``resume_owed`` once a user's
confirmation window has passed with no device Delivered.

Two built-in targets, per category (apps file): a Celery task by name, published to the
category's queue for the application's own worker (email, SMS, an in-app inbox), and a
webhook, POSTed by ``fallback_webhook`` on the maintenance pool. Both get the same JSON
object, with ``key`` (notification id and user) for the receiver to drop a repeat: the
row is leased while its task is published, so only a process dying between the publish
and the record repeats one.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from notifier.store import DueFallback
from workers.celery import app
from workers.queues import TASK_FALLBACK_WEBHOOK
from workers.runtime import Runtime, runtime

log = logging.getLogger(__name__)

# Webhook answers worth another try (the row says 'failed' after the last)
WEBHOOK_RETRIES = 5
WEBHOOK_TIMEOUT = 10.0


def fallback_body(due: DueFallback) -> dict[str, Any]:
    n = due.notification
    return {"key": f"{due.notification_id}:{due.user_id}", "app": due.app, "user": due.user_id,
            "notification_id": due.notification_id, "category": n.category, "reason": due.reason,
            "title": n.title, "body": n.body, "data": dict(n.data)}


def dispatch_fallbacks(rt: Runtime) -> dict[str, int]:
    """Judge the due rows and publish each owed fallback; counts by what happened."""
    counts = {"fallbacks": 0, "fallbacks_unpublished": 0}
    for due in rt.store.take_due_fallbacks():
        cfg = rt.settings.apps.get(due.app)
        category = cfg.category(due.notification.category) if cfg else None
        if category is None or not category.critical:  # the apps file changed since: nothing to send to
            rt.store.fallback_done(due.notification_id, due.user_id, "failed", "category no longer critical")
            continue
        body = fallback_body(due)
        try:
            if category.fallback_task:
                app.send_task(category.fallback_task, kwargs=body, queue=category.fallback_queue)
            if category.fallback_webhook:
                fallback_webhook.apply_async((category.fallback_webhook, body))
        except Exception as exc:  # not published: the lease lapses and the next run tries again
            log.warning("could not publish the fallback of %s: %s", due.notification_id, type(exc).__name__)
            counts["fallbacks_unpublished"] += 1
            continue
        detail = f"task {category.fallback_task}" if category.fallback_task else "webhook queued"
        rt.store.fallback_done(due.notification_id, due.user_id, "sent", detail)
        counts["fallbacks"] += 1
    return counts


@app.task(name=TASK_FALLBACK_WEBHOOK, bind=True, max_retries=WEBHOOK_RETRIES)
def fallback_webhook(self: Any, url: str, body: dict[str, Any]) -> int:
    """POST the fallback; its answer goes beside the push outcomes (``notifier status``)."""
    nid, user = body["notification_id"], body["user"]
    try:
        answer = httpx.post(url, json=body, timeout=WEBHOOK_TIMEOUT, headers={"Idempotency-Key": body["key"]})
        status: int | None = answer.status_code
    except httpx.HTTPError as exc:
        status, answer = None, None
        log.warning("fallback webhook for %s: %s", nid, type(exc).__name__)
    if status is not None and status < 300:
        runtime().store.fallback_done(nid, user, "sent", f"webhook {status}")
        return status
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        runtime().store.fallback_done(nid, user, "failed", f"webhook {status}")
        return status
    if self.request.retries >= WEBHOOK_RETRIES:
        runtime().store.fallback_done(nid, user, "failed", f"webhook {status or 'unreachable'} after retries")
        return status or 0
    raise self.retry(countdown=min(60, 2 ** (self.request.retries + 1)))
