"""The tasks: thin, they load ids, call ``notifier`` and turn outcomes into retries.

``notify`` validates in the caller (``notify.delay`` raises ``InvalidNotification`` and
enqueues nothing), then on a worker stores the notification and fans it out by keyset
pages, one ``send_<platform>`` task per page and platform carrying only a device id
range. Those claim the devices still owed the notification, send, record every outcome
and retry only the transient part.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import redis
from celery import Task
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg_pool import PoolTimeout

from notifier.config import Settings
from notifier.errors import ConfigError, InvalidNotification
from notifier.model import (
    Device, Notification, Platform, build_notification, check_app, check_audience, check_condition, check_topic,
    notification_id,
)
from notifier.store import PROVIDER_TARGET_DEVICE, Audience
from notifier.outcomes import CredentialFailure, DeadToken, MessageRejected, RetryAfter
from notifier.payload import check_fits
from workers.celery import app
from workers.queues import TASK_FCM_TARGET, TASK_FCM_TOPIC_MEMBERS, TASK_NOTIFY, TASK_SEND, TASK_SWEEP
from workers.retry import MAX_DELAY, decide
from workers.runtime import runtime

log = logging.getLogger(__name__)

# Seconds a claim outlives its batch's budget before another task may take the devices over.
LEASE_MARGIN = 5.0
# A claim lapsed this long ago has no task coming back for it: the sweep requeues it.
STRANDED_AFTER = timedelta(minutes=2)


AUDIENCE_KEYS = ("users", "topic", "fcm_topic", "fcm_condition")


def checked(app_name: object, fields: dict[str, Any]) -> tuple[str, Audience, Notification]:
    """The whole boundary check of a notify call; raises InvalidNotification.

    ``fields`` holds exactly one audience key (users, topic, fcm_topic, fcm_condition)
    and the notification's fields; it is consumed.
    """
    given = {k: fields.pop(k) for k in AUDIENCE_KEYS if fields.get(k) is not None}
    for k in AUDIENCE_KEYS:
        fields.pop(k, None)
    unknown = set(fields) - set(Notification.__dataclass_fields__)
    if unknown:
        raise InvalidNotification(f"notify() got unknown fields {sorted(unknown)}")
    if len(given) != 1:
        raise InvalidNotification("notify() needs exactly one audience: users, topic, fcm_topic or fcm_condition")
    name = check_app(app_name)
    (kind, value), = given.items()
    if kind == "users":
        audience = Audience(users=check_audience(value))
    elif kind == "topic":
        audience = Audience(topic=check_topic(value))
    elif kind == "fcm_topic":
        audience = Audience(provider_target={"fcm_topic": check_topic(value)})
    else:
        audience = Audience(provider_target={"fcm_condition": check_condition(value)})
    n = build_notification(**fields)
    check_fits(n)
    return name, audience, n


def audience_kwargs(audience: Audience) -> dict[str, Any]:
    if audience.topic is not None:
        return {"topic": audience.topic}
    if audience.provider_target:
        return dict(audience.provider_target)
    return {"users": list(audience.users)}


class NotifyTask(Task):  # type: ignore[misc]
    """``notify.delay(app, users, title=..., ...)`` (or ``topic=``, ``fcm_topic=``,
    ``fcm_condition=`` instead of users): checked before anything is enqueued.

    The task id is the notification id (``notifier status ID``); with ``idempotency_key``
    it is derived from (app, key), so the same notification sent twice is stored once.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        args, kwargs = list(args or ()), dict(kwargs or {})
        if len(args) > 2:
            raise InvalidNotification("notify() takes app and users positionally, the rest by name")
        for i, name in enumerate(("app", "users")[: len(args)]):
            kwargs[name] = args[i]
        if "app" not in kwargs:
            raise InvalidNotification("notify() needs app and an audience")
        key = kwargs.pop("idempotency_key", None)
        name, audience, n = checked(kwargs.pop("app"), kwargs)
        settings = Settings.current()
        if settings.apps_file is not None and name not in settings.apps:
            raise InvalidNotification(f"app {name!r} is not in {settings.apps_file}")
        nid = task_id or notification_id(name, key)  # a retry keeps its notification id
        payload = {"app": name, **audience_kwargs(audience), **n.to_json()}
        return super().apply_async((), payload, task_id=nid, **options)


# What a task retries on instead of failing: the store or the broker away longer than the
# in-process retries wait (a task that fails is acknowledged, and its devices would wait
# for nobody).
INFRA_ERRORS = (psycopg.Error, PoolTimeout, KombuOperationalError, redis.RedisError)
INFRA_RETRY: dict[str, Any] = dict(autoretry_for=INFRA_ERRORS, retry_backoff=2, retry_backoff_max=60,
                                   retry_jitter=True, max_retries=None)


@app.task(name=TASK_NOTIFY, base=NotifyTask, bind=True, **INFRA_RETRY)
def notify(self: Task, app: str, **fields: Any) -> int:
    """Store the notification and fan it out; returns the number of pages enqueued."""
    name, audience, n = checked(app, fields)
    rt = runtime()
    nid = self.request.id
    cursor = rt.store.create_notification(nid, name, audience, n)
    if cursor is not None and audience.provider_target:
        rt.store.add_provider_target(nid, next(iter(audience.provider_target.values())))
        send_fcm_target.apply_async((nid,))
        rt.store.finish_fanout(nid)
        return 0
    pages = 0
    while cursor is not None:
        ranges = rt.store.fan_out_page(nid, name, audience, cursor, rt.settings.batch_size)
        if not ranges:
            break
        for platform, (lo, hi) in ranges.items():
            SEND[platform].apply_async((nid, lo, hi))
        cursor = max(hi for _, hi in ranges.values())
        rt.store.advance_fanout(nid, cursor)
        pages += 1
    rt.store.finish_fanout(nid)
    return pages


def deliver(task: Task, platform: Platform, nid: str, lo: int, hi: int) -> None:
    """Send one batch: claim, send, record, retry the transient part.

    Devices of the range claimed by another task (a redelivered copy of this one while the
    first still runs, or the remains of a killed one) are left to that claim; when it
    lapses, this task comes back for whatever is still owed.
    """
    rt = runtime()
    budget = rt.settings.send_timeout * (rt.settings.batch_size / rt.settings.max_in_flight + 2)
    claim = rt.store.claim(nid, platform, lo, hi, lease=timedelta(seconds=budget + LEASE_MARGIN))
    if claim is not None and claim.busy_until is not None:
        wait = max(1.0, (claim.busy_until - datetime.now(timezone.utc)).total_seconds() + 1)
        if not claim.devices:
            raise task.retry(countdown=min(wait, MAX_DELAY), max_retries=None)
        # send ours now; come back for the other claim's leftovers afterwards
        task.apply_async((nid, lo, hi), countdown=min(wait, MAX_DELAY))
    if claim is None or claim.expired or not claim.devices:
        return
    try:
        channel = rt.channel(claim.app, platform)
    except ConfigError as exc:
        log.error("notification %s: %s", nid, exc)
        failure = CredentialFailure(claim.app, str(exc))
        rt.store.record(nid, [(d, failure, "failed") for d in claim.devices])
        return
    breaker = rt.breaker(claim.app, platform)
    admission = breaker.admit()
    if not admission.send:  # the provider is down: park the batch, don't hammer it
        rt.store.release(nid, [d.id for d in claim.devices])
        raise task.retry(countdown=min(MAX_DELAY, admission.wait + random.uniform(0, 1)), max_retries=None)
    try:
        outcomes = rt.run(channel.send(claim.notification, claim.devices), timeout=budget)
    except TimeoutError:  # every send has its own timeout; this is the belt to those braces
        outcomes = [RetryAfter(None, "batch timed out")] * len(claim.devices)
    breaker.observe(outcomes, admission)
    decision = decide(claim.devices, outcomes, claim.attempts, rt.settings.max_attempts)
    rt.store.record(nid, decision.results)
    creds = {o.reason for _, o, _ in decision.results if isinstance(o, CredentialFailure)}
    for reason in creds:
        log.error("credential failure for app %s on %s: %s", claim.app, platform, reason)
    if decision.countdown is not None:
        raise task.retry(countdown=decision.countdown, max_retries=None)


@app.task(name=TASK_SEND[Platform.WEBPUSH], bind=True, **INFRA_RETRY)
def send_webpush(self: Task, nid: str, lo: int, hi: int) -> None:
    deliver(self, Platform.WEBPUSH, nid, lo, hi)


@app.task(name=TASK_SEND[Platform.APNS], bind=True, **INFRA_RETRY)
def send_apns(self: Task, nid: str, lo: int, hi: int) -> None:
    deliver(self, Platform.APNS, nid, lo, hi)


@app.task(name=TASK_SEND[Platform.FCM], bind=True, **INFRA_RETRY)
def send_fcm(self: Task, nid: str, lo: int, hi: int) -> None:
    deliver(self, Platform.FCM, nid, lo, hi)


SEND = {Platform.WEBPUSH: send_webpush, Platform.APNS: send_apns, Platform.FCM: send_fcm}


@app.task(name=TASK_FCM_TARGET, bind=True, **INFRA_RETRY)
def send_fcm_target(self: Task, nid: str) -> None:
    """One request to an FCM topic or condition (no fan-out, no per-device outcomes)."""
    rt = runtime()
    claim = rt.store.claim_provider_target(nid)
    if claim is None:
        return
    n, app_name, target, attempts = claim
    name = next(iter(target.values()))
    pseudo = Device(PROVIDER_TARGET_DEVICE, app_name, Platform.FCM, name)
    try:
        channel = rt.channel(app_name, Platform.FCM)
    except ConfigError as exc:
        rt.store.record(nid, [(pseudo, CredentialFailure(app_name, str(exc)), "failed")])
        return
    outcome = rt.run(channel.send_to(n, topic=target.get("fcm_topic"), condition=target.get("fcm_condition")),
                     timeout=rt.settings.send_timeout * 3)
    if isinstance(outcome, DeadToken):  # a topic is never "dead": FCM said the message is wrong
        outcome = MessageRejected(outcome.reason, outcome.status)
    decision = decide([pseudo], [outcome], {PROVIDER_TARGET_DEVICE: attempts}, rt.settings.max_attempts)
    rt.store.record(nid, decision.results)
    if decision.countdown is not None:
        raise self.retry(countdown=decision.countdown, max_retries=None)


@app.task(name=TASK_FCM_TOPIC_MEMBERS)
def fcm_topic_members(app: str, topic: str, tokens: list[str], subscribe: bool = True) -> dict[str, int]:
    """Subscribe (or unsubscribe) FCM registration tokens to an FCM-side topic, in batches.

    Returns counts of successes and failures; a failure never removes a token.
    """
    rt = runtime()
    channel = rt.channel(check_app(app), Platform.FCM)
    return rt.run(channel.manage_topic(check_topic(topic), list(tokens), subscribe),
                  timeout=rt.settings.send_timeout * (len(tokens) / 1000 + 2))


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
