"""The tasks: thin, they load ids, call ``notifier`` and record outcomes.

``notify.delay(...)`` checks the call in the caller (``notifier.api.prepare_notify``:
``InvalidNotification`` and nothing enqueued) and enqueues the prepared request; on a
worker, ``fan_out`` stores it and fans it out by keyset pages, one ``send_<platform>``
task per page and platform carrying only a device id range. Those claim the devices
still owed the notification, send, and record every outcome as it arrives
(``workers.batch``). ``resume_owed`` dispatches what is due again: retries, parked
batches, and whatever lost its owner. Broker messages only wake workers up; what is
owed, and when, is in PostgreSQL (on the transactional lane, once its first commit has
reached the disk: a few hundred milliseconds at most, README "Commits that do not wait
for the disk"; until then the broker's message is what holds it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import psycopg
import redis
from celery import Task
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg_pool import PoolTimeout

from notifier.api import default_store, prepare_notify
from notifier.checks import check_app, check_topic
from notifier.config import Settings
from notifier.endpoints import origin_of
from notifier.errors import ConfigError, InvalidNotification, StoreError
from notifier.model import Device, Everyone, FcmCondition, FcmTopic, NotifyRequest, Platform, Users
from notifier.outcomes import CredentialFailure, Outcome, RetryAfter
from notifier.store import PROVIDER_TARGET_DEVICE
from workers.batch import LEASE, alert, counted, record, run_batch
from workers.breaker import CLOSED, Admission, origin_breaker, provider_breaker
from workers.celery import app
from workers.fallback import dispatch_fallbacks
from workers.pacing import Pacer
from workers.queues import (
    CHANNEL_QUEUES,
    TASK_FAN_OUT,
    TASK_FCM_TARGET,
    TASK_FCM_TOPIC_MEMBERS,
    TASK_PURGE,
    TASK_RESUME,
    TASK_SEND,
    TASK_SWEEP,
    TRANSACTIONAL,
)
from workers.retry import decide
from workers.rules import WHOLE, PageRules
from workers.runtime import Runtime, runtime

log = logging.getLogger(__name__)


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
        settings = Settings.current()
        if request.release_at is not None:  # scheduled: it waits in PostgreSQL, not in the broker
            default_store().create_notification(request, grace=settings.dispatch_grace)
            if request.release_at > request.requested_at:  # the resumer starts its fan-out when due
                return AsyncResult(request.id, app=app)
        if transactional(request, settings):
            options.setdefault("queue", TRANSACTIONAL)
        result: AsyncResult[Any] = fan_out.apply_async((request.to_json(),), task_id=request.id, **options)
        return result


def transactional(request: NotifyRequest, settings: Settings) -> bool:
    """A notification to a few users: it takes the transactional lane, where its fan-out
    sends too, never queued behind a broadcast's batches."""
    return isinstance(request.audience, Users) and len(request.audience.ids) <= settings.transactional_max


notify = Notify()


# The fan-out retries (short countdowns, under a minute) while the store or the broker is
# away: until it has stored the notification, nothing else knows of it. Channel tasks and
# the resumer never retry through the broker: what they leave owed is in PostgreSQL with
# a due time, and the resumer dispatches it again.
INFRA_ERRORS = (psycopg.OperationalError, PoolTimeout, StoreError, KombuOperationalError, redis.ConnectionError)
INFRA_RETRY: dict[str, Any] = dict(autoretry_for=INFRA_ERRORS, retry_backoff=2, retry_backoff_max=30,
                                   retry_jitter=True, max_retries=None)
# The fan-out's lease on its notification, renewed with every page.
FANOUT_LEASE = timedelta(seconds=30)
# Users of a user list looked up per statement when their delivery rows are written.
USERS_PER_STATEMENT = 10_000


@app.task(name=TASK_FAN_OUT, bind=True, **INFRA_RETRY)
def fan_out(self: Task[Any, Any], raw: dict[str, Any]) -> int:
    """Store the notification and fan it out; returns the number of pages enqueued.

    One fan-out per notification at a time (a lease): a redelivered or resumed copy while
    the first still runs finds it owned and stops; one that finds it abandoned resumes at
    the cursor.
    """
    request = NotifyRequest.from_json(raw)  # checked by notify() before it was enqueued
    rt = runtime()
    grace = rt.settings.dispatch_grace
    nid, audience = request.id, request.audience
    rules = PageRules(rt, request)
    owner = str(uuid.uuid4())
    users = audience.ids if isinstance(audience, Users) else ()
    # stored, claimed and the first slice of a user list written in one transaction; on
    # the transactional lane its commit does not wait for the disk (_lease_lost)
    cursor = rt.store.begin_fanout(request, owner, FANOUT_LEASE, grace=grace, users=users[:USERS_PER_STATEMENT],
                                   judged=not rules.judges, durable=not transactional(request, rt.settings))
    if cursor is None:
        return 0
    if isinstance(audience, FcmTopic | FcmCondition):
        rt.store.add_provider_target(nid, audience.name if isinstance(audience, FcmTopic) else audience.expression,
                                     grace)
        send_fcm_target.apply_async((nid,))
        rt.store.finish_fanout(nid, owner)
        return 0
    if isinstance(audience, Users):  # each user looked up once, a slice per statement; idempotent
        for start in range(USERS_PER_STATEMENT, len(users), USERS_PER_STATEMENT):
            if not rt.store.advance_fanout(nid, owner, cursor, FANOUT_LEASE):  # the lease renewed
                return _lease_lost(rt, request, 0)
            rt.store.add_users(nid, request.app, users[start:start + USERS_PER_STATEMENT], grace,
                               judged=not rules.judges)
        if rules.needed:
            rules.apply(*WHOLE)
    return _pages(rt, request, owner, cursor, rules)


def _pages(rt: Runtime, request: NotifyRequest, owner: str, cursor: int, rules: PageRules) -> int:
    """The fan-out's keyset pages from ``cursor``: rows written, rules applied, and each
    platform's range dispatched, or, for a few devices, sent from here (no second hop)."""
    nid = request.id
    page = _Pages(rt, request, rules)
    if not transactional(request, rt.settings):
        return _paced(rt, request, owner, cursor, page)
    while ranges := page(cursor):
        for platform, (lo, hi) in ranges.items():
            deliver(platform, nid, lo, hi, durable=False)
        cursor = max(hi for _, hi in ranges.values())
        if not rt.store.advance_fanout(nid, owner, cursor, FANOUT_LEASE, durable=False):
            return _lease_lost(rt, request, page.count)
    if not rt.store.finish_fanout(nid, owner, durable=False):
        return _lease_lost(rt, request, page.count)
    return page.count


class _Pages:
    """Writes the next page (of one platform, or of all) and applies the rules to it."""

    def __init__(self, rt: Runtime, request: NotifyRequest, rules: PageRules) -> None:
        self.rt, self.request, self.rules = rt, request, rules
        self.count = 0

    def __call__(self, after: int, platform: Platform | None = None) -> dict[Platform, tuple[int, int]]:
        rt, request, rules = self.rt, self.request, self.rules
        ranges = rt.store.fan_out_page(request.id, request.app, request.audience, after, rt.settings.batch_size,
                                       rt.settings.dispatch_grace, judged=not rules.judges, platform=platform)
        if ranges and rules.needed and not isinstance(request.audience, Users):
            rules.apply(min(lo for lo, _ in ranges.values()), max(hi for _, hi in ranges.values()))
        self.count += bool(ranges)
        return ranges


def _paced(rt: Runtime, request: NotifyRequest, owner: str, cursor: int, page: _Pages) -> int:
    """Pages dispatched as their channel queues have room (workers.pacing): a cursor per
    platform, each paced by its own queue, so the slowest channel does not hold the others
    back. The stored cursor is the lowest (a fan-out resumed from it writes nothing twice,
    and a range dispatched twice is claimed once). With rules to apply (a category, a
    collapse key, a local time) one cursor pages every platform together, as the rules
    judge a user's devices together, paced by the queues of the last page's platforms.

    A user list is not paced: ``add_users`` wrote all its rows, due after the dispatch
    grace, before the first page, so a page held back past the grace would be dispatched
    by the resumer anyway (user lists are bounded by ``checks.MAX_AUDIENCE``)."""
    nid, audience = request.id, request.audience
    only = audience.platform if isinstance(audience, Everyone) else None
    cursors: dict[Platform | None, int] = ({None: cursor} if (page.rules.needed and not only)
                                           or isinstance(audience, Users)
                                           else {p: cursor for p in ([only] if only else Platform)})
    pacer = Pacer(rt.settings.fanout_ahead if not isinstance(audience, Users) else None, rt.settings.dispatch_grace)
    last: set[Platform] = set()  # the platforms of the last page of the one cursor
    stored, renewed = cursor, time.monotonic()
    while cursors:
        moved = False
        for key in [k for k in cursors if pacer.rooms([CHANNEL_QUEUES[p] for p in ([k] if k else last)])]:
            ranges = page(cursors[key], key)
            if not ranges:
                del cursors[key]  # every device of it is dispatched
                continue
            for platform, (lo, hi) in ranges.items():
                SEND[platform].apply_async((nid, lo, hi))
            cursors[key], moved, last = max(hi for _, hi in ranges.values()), True, set(ranges)
        if not moved:
            pacer.pause()
        if cursors and (moved or time.monotonic() - renewed > FANOUT_LEASE.total_seconds() / 6):
            stored = max(stored, min(cursors.values()))  # never backwards
            if not rt.store.advance_fanout(nid, owner, stored, FANOUT_LEASE):
                return _lease_lost(rt, request, page.count)
            renewed = time.monotonic()
    rt.store.finish_fanout(nid, owner)
    if pacer.waited:
        log.info("notification %s: fanned out in %d pages, %.1f s of it waiting for room in the channel queues",
                 nid, page.count, pacer.waited)
    return page.count


def _lease_lost(rt: Runtime, request: NotifyRequest, pages: int) -> int:
    """Another fan-out owns the notification now. On the transactional lane its row may be
    gone instead: ``begin_fanout``'s commit did not wait for the disk and PostgreSQL
    crashed. That fan-out starts again (StoreError: the task is retried, not acknowledged)."""
    nid = request.id
    if transactional(request, rt.settings) and rt.store.app_of(nid) is None:
        raise StoreError(f"notification {nid} is not in PostgreSQL any more (a crash lost its last commits): "
                         "its fan-out starts again")
    log.warning("notification %s: fan-out lease lost after %d pages; another fan-out, or the resumer once the lease"
                " lapses, goes on", nid, pages)
    return pages


def deliver(platform: Platform, nid: str, lo: int, hi: int, *, durable: bool = True) -> None:
    """Send one batch: ask the breakers, claim at most a batch of owed devices in the
    range, send, record, and tell the breakers how it went. Not ``durable`` (the
    transactional lane): the claim's commit does not wait for the disk (store.claim).

    Devices claimed by another live task are left to it; if it dies, its claim lapses
    and the resumer dispatches them again. Rows a tripped breaker parks are never
    claimed: they wait in PostgreSQL, like retries.
    """
    rt = runtime()
    admissions, exclude = _ask_breakers(rt, platform, nid, lo, hi)
    if admissions is None:
        return  # the provider's breaker parked the whole range
    seen: dict[str, list[Outcome]] = {}
    try:
        seen = _claim_and_send(rt, platform, nid, lo, hi, admissions, exclude, durable)
        for name, outcomes in seen.items():
            rt.breakers.observe(name, outcomes, admissions.get(name, CLOSED))
    finally:  # a probe that sent nothing (nothing left to claim) gives its turn back at once
        for name in [n for n, a in admissions.items() if a.probe and n not in seen]:
            rt.breakers.release(name)


def _claim_and_send(rt: Runtime, platform: Platform, nid: str, lo: int, hi: int, admissions: dict[str, Admission],
                    exclude: list[int], durable: bool) -> dict[str, list[Outcome]]:
    """Claim, send and record; the outcomes by breaker."""
    s = rt.settings
    probing = any(a.probe for a in admissions.values())
    claim = rt.store.claim(nid, platform, lo, hi, limit=min(s.batch_size, PROBE_SIZE) if probing and
                           platform is not Platform.WEBPUSH else s.batch_size,
                           max_attempts=s.max_attempts, lease=LEASE, retry_window=s.retry_window, exclude=exclude,
                           durable=durable)
    if claim is None or claim.expired or not claim.devices:
        return {}
    try:
        channel = rt.channel(claim.app, platform)
    except ConfigError as exc:
        failure = CredentialFailure(claim.app, str(exc))
        record(rt, nid, claim, [(d, failure) for d in claim.devices])
        return {}
    budget = s.send_timeout * (len(claim.devices) / s.max_in_flight + 2)
    outcomes = run_batch(rt, channel, nid, claim, budget)
    by_breaker: dict[str, list[Outcome]] = {}
    for device, outcome in zip(claim.devices, outcomes, strict=True):
        by_breaker.setdefault(_breaker_of(platform, claim.app, device.token), []).append(outcome)
    return by_breaker


# A provider's half-open breaker is probed with a few devices, not a whole batch.
PROBE_SIZE = 10


def _breaker_of(platform: Platform, app: str, token: str) -> str:
    if platform is Platform.WEBPUSH:
        return origin_breaker(origin_of(token))
    return provider_breaker(platform.value, app)


def _ask_breakers(rt: Runtime, platform: Platform, nid: str, lo: int, hi: int
                  ) -> tuple[dict[str, Admission] | None, list[int]]:
    """The admissions of the tripped breakers this range meets, and the devices parked
    (excluded from the claim); None when every device was parked. Nothing to ask, and no
    query, while no breaker of the platform is tripped."""
    tripped = rt.breakers.tripped(platform.value)
    if not tripped:
        return {}, []
    admissions: dict[str, Admission] = {}
    if platform is not Platform.WEBPUSH:
        app = rt.store.app_of(nid)
        name = provider_breaker(platform.value, app or "")
        if name not in tripped:
            return {}, []
        admissions[name] = admission = rt.breakers.admit(name, tripped[name])
        if admission.send:
            return admissions, []
        rt.store.park(nid, platform, lo, hi, admission.wait, admission.spread)
        return None, []
    by_origin: dict[str, list[int]] = {}
    for device_id, token in rt.store.owed_tokens(nid, platform, lo, hi):
        by_origin.setdefault(origin_breaker(origin_of(token)), []).append(device_id)
    parked: list[int] = []
    for name, ids in by_origin.items():
        if name in tripped:
            admissions[name] = admission = rt.breakers.admit(name, tripped[name])
            if not admission.send:
                rt.store.park(nid, platform, lo, hi, admission.wait, admission.spread, ids)
                parked += ids
    return admissions, parked


@app.task(name=TASK_SEND[Platform.WEBPUSH])
def send_webpush(nid: str, lo: int, hi: int) -> None:
    deliver(Platform.WEBPUSH, nid, lo, hi)


@app.task(name=TASK_SEND[Platform.APNS])
def send_apns(nid: str, lo: int, hi: int) -> None:
    deliver(Platform.APNS, nid, lo, hi)


@app.task(name=TASK_SEND[Platform.FCM])
def send_fcm(nid: str, lo: int, hi: int) -> None:
    deliver(Platform.FCM, nid, lo, hi)


SEND = {Platform.WEBPUSH: send_webpush, Platform.APNS: send_apns, Platform.FCM: send_fcm}


@app.task(name=TASK_FCM_TARGET)
def send_fcm_target(nid: str) -> None:
    """One request to an FCM topic or condition (no fan-out, no per-device outcomes)."""
    rt = runtime()
    # the lease covers the whole send (not renewed): a slow send is never taken over and
    # sent to the whole topic a second time
    lease = timedelta(seconds=rt.settings.send_timeout * 3) + LEASE
    claim = rt.store.claim_provider_target(nid, lease, rt.settings.retry_window)
    if claim is None:
        return
    name = claim.target.name if isinstance(claim.target, FcmTopic) else claim.target.expression
    pseudo = Device(PROVIDER_TARGET_DEVICE, claim.app, Platform.FCM, name)
    outcome: Outcome
    try:
        channel = rt.provider_topics(claim.app)
        outcome = rt.run(channel.send_to(claim.notification, claim.target), timeout=rt.settings.send_timeout * 3)
    except ConfigError as exc:
        outcome = CredentialFailure(claim.app, str(exc))
    except TimeoutError:
        outcome = RetryAfter(None, "send timed out")
    results = decide([pseudo], [outcome], {PROVIDER_TARGET_DEVICE: claim.attempts}, rt.settings.max_attempts,
                     () if claim.window_open else {PROVIDER_TARGET_DEVICE}, claim.remaining)
    counted(claim.app, Platform.FCM, rt.store.record(nid, claim.claim_id, results))
    alert(claim.app, Platform.FCM, results)


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


# Each periodic job runs once per tick, however many beats were started by mistake: a
# PostgreSQL advisory lock keeps two runs from overlapping (a sweep longer than its
# interval must not take the maintenance pool's other processes, which the resumer
# needs every few seconds), and ``start_periodic`` lets one run start per interval.
SWEEP_LOCK = 0x73776570  # "swep"
PURGE_LOCK = 0x70757267  # "purg"
RESUME_LOCK = 0x72736d65  # "rsme"


def _periodic(job: str, interval: float, lock: int, run: Callable[[Runtime], dict[str, Any]]) -> dict[str, Any]:
    """Run ``run`` unless another run of ``job`` holds ``lock`` or already ran this tick."""
    rt = runtime()
    with rt.store.pool.connection() as conn:
        conn.autocommit = True
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()
        if not row or not row[0]:
            return {"skipped": "another run holds the lock"}
        try:
            if not rt.store.start_periodic(job, interval):
                return {"skipped": "already ran this tick"}
            return run(rt)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))


@app.task(name=TASK_SWEEP)
def sweep_stale_tokens() -> dict[str, Any]:
    """Remove devices whose dead-token verdict stands, and inactive ones (beat_schedule)."""
    from notifier.sweep import sweep

    return _periodic("sweep", runtime().settings.sweep_interval, SWEEP_LOCK,
                     lambda rt: asdict(sweep(rt.store, rt.settings)))


@app.task(name=TASK_PURGE)
def purge_outcomes() -> dict[str, Any]:
    """Delete outcomes past NOTIFIER_RETENTION_DAYS in small chunks (beat_schedule)."""
    from notifier.retention import purge

    return _periodic("purge", runtime().settings.purge_interval, PURGE_LOCK,
                     lambda rt: asdict(purge(rt.store, rt.settings)))


# Rows the resumer takes per query, and the most time one run spends taking them.
RESUME_TAKE = 10_000
RESUME_BUDGET = 5.0


@app.task(name=TASK_RESUME)
def resume_owed() -> dict[str, Any]:
    """Dispatch what is owed and has no owner (beat runs it every NOTIFIER_RESUME_INTERVAL):
    stalled fan-outs, due retries and parked batches, scheduled rows now due, lapsed
    claims, dispatched rows no task has claimed within the dispatch grace (their task was
    lost), and critical notifications' fallbacks whose window has passed.

    If a publish fails, the rows it carried stay due: the next run dispatches them.
    """
    return _periodic("resume", runtime().settings.resume_interval, RESUME_LOCK, _resume)


def _resume(rt: Runtime) -> dict[str, Any]:
    s = rt.settings
    counts: dict[str, Any] = {"fanouts": 0, "ranges": 0, "unpublished": 0}
    for request in rt.store.take_stalled_fanouts(limit=100, grace=s.dispatch_grace):
        counts["fanouts" if _publish(fan_out, (request.to_json(),)) else "unpublished"] += 1
    end = time.monotonic() + RESUME_BUDGET
    while time.monotonic() < end:
        ranges = rt.store.take_due(limit=RESUME_TAKE, batch_size=s.batch_size, grace=s.dispatch_grace)
        for r in ranges:
            if r.provider_target:
                sent = _publish(send_fcm_target, (r.notification_id,))
            else:
                sent = _publish(SEND[Platform(r.platform)], (r.notification_id, r.first, r.last))
            counts["ranges" if sent else "unpublished"] += 1
        if not ranges:
            break
    counts.update(dispatch_fallbacks(rt))
    if any(counts.values()):
        log.info("resumed %d fan-outs and %d delivery ranges; %d could not be published (due again after the "
                 "dispatch grace); %d fallbacks", counts["fanouts"], counts["ranges"], counts["unpublished"],
                 counts["fallbacks"])
    return counts


def _publish(task: Any, args: tuple[Any, ...]) -> bool:
    """Publish one task; False when the broker refused it (the work stays owed in PostgreSQL)."""
    try:
        task.apply_async(args)
    except Exception as exc:  # refused, timed out, nacked: all mean "not published", and it stays due
        log.warning("could not publish %s: %s", task.name, type(exc).__name__)
        return False
    return True
