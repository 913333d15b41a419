"""The tasks: thin, they load ids, call ``notifier`` and turn outcomes into retries.

``notify.delay(...)`` checks the call in the caller (``notifier.api.prepare_notify``:
``InvalidNotification`` and nothing enqueued) and enqueues the prepared request; on a
worker, ``fan_out`` stores it and fans it out by keyset pages, one ``send_<platform>``
task per page and platform carrying only a device id range. Those claim the devices
still owed the notification, send, record every outcome and retry only the transient part.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from celery import Task
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg_pool import PoolTimeout

from notifier.api import prepare_notify
from notifier.checks import check_app, check_topic
from notifier.errors import ConfigError, InvalidNotification
from notifier.feedback import feedback
from notifier.model import Device, FcmCondition, FcmTopic, NotifyRequest, Platform
from notifier.outcomes import CredentialFailure, Outcome, RetryAfter, every
from notifier.store import PROVIDER_TARGET_DEVICE
from workers.celery import app
from workers.queues import TASK_FAN_OUT, TASK_FCM_TARGET, TASK_FCM_TOPIC_MEMBERS, TASK_SEND, TASK_SWEEP
from workers.retry import MAX_DELAY, Decision, decide
from workers.runtime import runtime

log = logging.getLogger(__name__)

# Seconds a claim outlives its batch's budget before another task may take the devices over.
LEASE_MARGIN = 5.0
# A claim lapsed this long ago has no task coming back for it: the sweep requeues it.
STRANDED_AFTER = timedelta(minutes=2)


class Notify:
    """``notify.delay(app, users, title=..., ...)``, or ``topic=``, ``fcm_topic=``,
    ``fcm_condition=`` instead of users: checked before anything is enqueued.

    The returned result's id is the notification id (``notifier status ID``); with
    ``idempotency_key`` it is derived from (app, key), so the same call twice is one
    notification.
    """

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult[Any]:
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if len(args) > 2:
            raise InvalidNotification("notify() takes app and users positionally, the rest by name")
        request = prepare_notify(*args, **kwargs)
        result: AsyncResult[Any] = fan_out.apply_async((request.to_json(),), task_id=request.id, **options)
        return result


notify = Notify()


# What a task retries on instead of failing: the store or the broker away longer than the
# in-process retries wait (a task that fails is acknowledged, and its devices would wait
# for nobody).
INFRA_ERRORS = (psycopg.Error, PoolTimeout, KombuOperationalError, redis.RedisError)
INFRA_RETRY: dict[str, Any] = dict(autoretry_for=INFRA_ERRORS, retry_backoff=2, retry_backoff_max=60,
                                   retry_jitter=True, max_retries=None)


@app.task(name=TASK_FAN_OUT, bind=True, **INFRA_RETRY)
def fan_out(self: Task[Any, Any], raw: dict[str, Any]) -> int:
    """Store the notification and fan it out; returns the number of pages enqueued."""
    request = NotifyRequest.from_json(raw)  # checked by notify() before it was enqueued
    rt = runtime()
    nid, audience = request.id, request.audience
    cursor = rt.store.create_notification(request)
    if isinstance(audience, FcmTopic | FcmCondition):
        if cursor is not None:
            rt.store.add_provider_target(nid, audience.name if isinstance(audience, FcmTopic) else audience.expression)
            send_fcm_target.apply_async((nid,))
            rt.store.finish_fanout(nid)
        return 0
    pages = 0
    while cursor is not None:
        ranges = rt.store.fan_out_page(nid, request.app, audience, cursor, rt.settings.batch_size)
        if not ranges:
            break
        for platform, (lo, hi) in ranges.items():
            SEND[platform].apply_async((nid, lo, hi))
        cursor = max(hi for _, hi in ranges.values())
        rt.store.advance_fanout(nid, cursor)
        pages += 1
    rt.store.finish_fanout(nid)
    return pages


def deliver(task: Task[Any, Any], platform: Platform, nid: str, lo: int, hi: int) -> None:
    """Send one batch: claim, send, record, retry the transient part.

    Devices of the range claimed by another task (a redelivered copy of this one while the
    first still runs, or the remains of a killed one) are left to that claim; when it
    lapses, this task comes back for whatever is still owed.
    """
    rt = runtime()
    budget = rt.settings.send_timeout * (rt.settings.batch_size / rt.settings.max_in_flight + 2)
    claim = rt.store.claim(nid, platform, lo, hi, lease=timedelta(seconds=budget + LEASE_MARGIN))
    if claim is not None and claim.busy_until is not None:
        wait = max(1.0, (claim.busy_until - datetime.now(UTC)).total_seconds() + 1)
        if not claim.devices:
            raise task.retry(countdown=min(wait, MAX_DELAY), max_retries=None)
        # send ours now; come back for the other claim's leftovers afterwards
        task.apply_async((nid, lo, hi), countdown=min(wait, MAX_DELAY))
    if claim is None or claim.expired or not claim.devices:
        return
    try:
        channel = rt.channel(claim.app, platform)
    except ConfigError as exc:
        failure = CredentialFailure(claim.app, str(exc))
        conclude(task, nid, claim.app, platform, decide(claim.devices, every(failure, claim.devices), {}, 1))
        return
    breaker = rt.breaker(claim.app, platform)
    admission = breaker.admit()
    if not admission.send:  # the provider is down: park the batch, don't hammer it
        rt.store.release(nid, [d.id for d in claim.devices])
        raise task.retry(countdown=min(MAX_DELAY, admission.wait + random.uniform(0, 1)), max_retries=None)
    outcomes: list[Outcome]
    try:
        outcomes = rt.run(channel.send(claim.notification, claim.devices), timeout=budget)
    except TimeoutError:  # every send has its own timeout; this is the belt to those braces
        outcomes = every(RetryAfter(None, "batch timed out"), claim.devices)
    breaker.observe(outcomes, admission)
    conclude(task, nid, claim.app, platform,
             decide(claim.devices, outcomes, claim.attempts, rt.settings.max_attempts))


def conclude(task: Task[Any, Any], nid: str, app_name: str, platform: Platform, decision: Decision) -> None:
    """Record a batch's results, alert operators where ``feedback`` says so, retry the rest."""
    runtime().store.record(nid, decision.results)
    alerts = {(type(r.outcome).__name__, getattr(r.outcome, "reason", "")) for r in decision.results
              if feedback(r.outcome).alert}
    for kind, reason in sorted(alerts):
        log.error("operator action needed for app %s on %s: %s: %s", app_name, platform, kind, reason)
    if decision.countdown is not None:
        raise task.retry(countdown=decision.countdown, max_retries=None)


@app.task(name=TASK_SEND[Platform.WEBPUSH], bind=True, **INFRA_RETRY)
def send_webpush(self: Task[Any, Any], nid: str, lo: int, hi: int) -> None:
    deliver(self, Platform.WEBPUSH, nid, lo, hi)


@app.task(name=TASK_SEND[Platform.APNS], bind=True, **INFRA_RETRY)
def send_apns(self: Task[Any, Any], nid: str, lo: int, hi: int) -> None:
    deliver(self, Platform.APNS, nid, lo, hi)


@app.task(name=TASK_SEND[Platform.FCM], bind=True, **INFRA_RETRY)
def send_fcm(self: Task[Any, Any], nid: str, lo: int, hi: int) -> None:
    deliver(self, Platform.FCM, nid, lo, hi)


SEND = {Platform.WEBPUSH: send_webpush, Platform.APNS: send_apns, Platform.FCM: send_fcm}


@app.task(name=TASK_FCM_TARGET, bind=True, **INFRA_RETRY)
def send_fcm_target(self: Task[Any, Any], nid: str) -> None:
    """One request to an FCM topic or condition (no fan-out, no per-device outcomes)."""
    rt = runtime()
    claim = rt.store.claim_provider_target(nid)
    if claim is None:
        return
    name = claim.target.name if isinstance(claim.target, FcmTopic) else claim.target.expression
    pseudo = Device(PROVIDER_TARGET_DEVICE, claim.app, Platform.FCM, name)
    outcome: Outcome
    try:
        channel = rt.provider_topics(claim.app)
    except ConfigError as exc:
        outcome = CredentialFailure(claim.app, str(exc))
    else:
        outcome = rt.run(channel.send_to(claim.notification, claim.target), timeout=rt.settings.send_timeout * 3)
    conclude(self, nid, claim.app, Platform.FCM,
             decide([pseudo], [outcome], {PROVIDER_TARGET_DEVICE: claim.attempts}, rt.settings.max_attempts))


@app.task(name=TASK_FCM_TOPIC_MEMBERS)
def fcm_topic_members(app: str, topic: str, tokens: list[str], subscribe: bool = True) -> dict[str, int]:
    """Subscribe (or unsubscribe) FCM registration tokens to an FCM-side topic, in batches.

    Returns counts of successes and failures; a failure never removes a token.
    """
    rt = runtime()
    channel = rt.provider_topics(check_app(app))
    result = rt.run(channel.manage_topic(check_topic(topic), list(tokens), subscribe),
                    timeout=rt.settings.send_timeout * (len(tokens) / 1000 + 2))
    return {"success": result.success, "failure": result.failure}


@app.task(name=TASK_SWEEP, **INFRA_RETRY)
def sweep_stale_tokens() -> dict[str, Any]:
    """Remove devices whose dead-token verdict stands, and inactive ones (beat_schedule)."""
    from dataclasses import asdict

    from notifier.sweep import sweep

    rt = runtime()
    report = asdict(sweep(rt.store, rt.settings))
    report["requeued"] = requeue_stranded()
    return report


def requeue_stranded() -> int:
    """Send tasks again for deliveries whose claim lapsed long ago (their task is gone).

    The claims make a needless re-send harmless: devices delivered or claimed by a live
    task are skipped.
    """
    rt = runtime()
    ranges = rt.store.stranded(STRANDED_AFTER)
    for nid, platform, lo, hi in ranges:
        if lo == PROVIDER_TARGET_DEVICE:
            send_fcm_target.apply_async((nid,))
        else:
            SEND[platform].apply_async((nid, lo, hi))
    if ranges:
        log.warning("requeued %d stranded delivery ranges", len(ranges))
    return len(ranges)
