"""Deliveries: claiming what a batch owes, recording outcomes as they come, reading status.

A row is *claimable* when it is pending (dispatched, not yet taken), or retrying or
sending with its ``due_at`` passed (a retry that is due, a claim whose holder stopped
renewing it). A claim takes at most ``limit`` rows under a fresh ``claim_id``; only the
holder of that id may write their outcomes, so a batch that lost its claim (it was slow,
another took the rows over) writes nothing.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from psycopg import Connection
from psycopg.rows import TupleRow

from notifier.feedback import Result, TokenEffect, feedback
from notifier.model import Device, FcmCondition, FcmTopic, Notification, Platform, audience_from_json
from notifier.outcomes import DeadToken
from notifier.store.base import (
    CLAIM_LEASE,
    MAX_LAPSES,
    PROVIDER_TARGET_DEVICE,
    SUPPRESSES,
    Claim,
    Failure,
    FallbackRow,
    Status,
    StoreBase,
    TargetClaim,
    commit_not_waiting_unless,
    transient,
    transient_in_batch,
)

CLAIMABLE = "(dl.status = 'pending' OR (dl.status IN ('retrying', 'sending') AND dl.due_at <= now()))"
IN_RANGE = "dl.notification_id = %s AND dl.platform = %s AND dl.device_id BETWEEN %s AND %s"


def _sendable(n: Notification, remaining: float) -> Notification:
    """The notification with only the TTL that remains: a retry never arrives later than
    the caller's TTL allowed (``expires_at`` counts from the notify() call)."""
    return replace(n, ttl=max(0, min(n.ttl, math.ceil(remaining))))


class DeliveryQueries(StoreBase):
    @transient
    def claim(self, nid: str, platform: Platform, lo: int, hi: int, *, limit: int, max_attempts: int,
              lease: timedelta = CLAIM_LEASE, retry_window: float = 3600.0, exclude: Sequence[int] = (),
              durable: bool = True) -> Claim | None:
        """Take at most ``limit`` claimable devices in [lo, hi]; None for an unknown notification.

        Past the TTL, rows become 'expired'; devices removed or declared stale since the
        fan-out become 'skipped'; rows already tried ``max_attempts`` times, or whose
        claims lapsed ``MAX_LAPSES`` times (a poison device, a crashing worker), become
        'failed'. A device's retry window (``retry_window`` seconds) opens at its first
        attempt; ``Claim.window_closed`` lists those whose window has closed. Devices in
        ``exclude`` are left alone (parked by a breaker).

        Not ``durable``: as ``commit_not_waiting_unless``. A lost claim leaves its rows
        claimable, and once the batch's outcomes find the claim gone they are sent again
        (a duplicate of what the batch sent). A broadcast's claims wait: the fault suite's
        PostgreSQL crash resent a whole batch (50) when they did not.
        """
        with self._pool.connection() as conn, conn.transaction():
            commit_not_waiting_unless(durable, conn)
            head = conn.execute(
                "SELECT app, payload, extract(epoch FROM expires_at - now()), cancelled_at IS NOT NULL"
                " FROM notifications WHERE id = %s",
                (nid,),
            ).fetchone()
            if head is None:
                return None
            app, payload, remaining = head[0], head[1], float(head[2])
            n = Notification.from_json(payload)
            if head[3]:  # cancelled while this batch was on its way
                conn.execute(f"UPDATE deliveries dl SET status = 'cancelled', reason = 'cancelled', updated_at = now()"
                             f" WHERE {IN_RANGE} AND {CLAIMABLE}", (nid, platform.value, lo, hi))
                return Claim(n, app, True, [], {})
            if remaining <= 0:
                conn.execute(f"UPDATE deliveries dl SET status = 'expired', reason = 'ttl passed', updated_at = now()"
                             f" WHERE {IN_RANGE} AND {CLAIMABLE}", (nid, platform.value, lo, hi))
                return Claim(n, app, True, [], {})
            _settle_unsendable(conn, nid, platform, lo, hi, max_attempts)
            claim_id = str(uuid.uuid4())
            rows = conn.execute(
                f"""
                WITH taken AS (
                    SELECT dl.device_id FROM deliveries dl
                     WHERE {IN_RANGE} AND {CLAIMABLE} AND NOT dl.device_id = ANY(%s)
                     ORDER BY dl.device_id LIMIT %s FOR UPDATE SKIP LOCKED
                )
                UPDATE deliveries dl
                   SET status = 'sending', claim_id = %s, due_at = now() + %s, attempts = dl.attempts + 1,
                       first_tried_at = coalesce(dl.first_tried_at, now()), updated_at = now()
                  FROM taken, devices d
                 WHERE dl.notification_id = %s AND dl.device_id = taken.device_id AND d.id = dl.device_id
                RETURNING d.id, d.app, d.token, d.p256dh, d.auth, dl.attempts,
                          dl.first_tried_at + make_interval(secs => %s) <= now()
                """,
                (nid, platform.value, lo, hi, list(exclude), limit, claim_id, lease, nid, retry_window),
            ).fetchall()
        devices = [Device(r[0], r[1], platform, r[2], r[3], r[4]) for r in sorted(rows)]
        attempts = {r[0]: r[5] for r in rows}
        closed = frozenset(r[0] for r in rows if r[6])
        return Claim(_sendable(n, remaining), app, False, devices, attempts, claim_id, closed, remaining, durable)

    @transient_in_batch
    def renew(self, nid: str, claim_id: str, lo: int, hi: int, lease: timedelta = CLAIM_LEASE) -> int:
        """Extend a live batch's claim on its devices in [lo, hi]; returns how many rows it
        still holds."""
        with self._pool.connection() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET due_at = now() + %s WHERE notification_id = %s AND device_id BETWEEN %s AND %s"
                " AND claim_id = %s AND status = 'sending'",
                (lease, nid, lo, hi, claim_id),
            )
            return cur.rowcount

    @transient_in_batch
    def record(self, nid: str, claim_id: str, results: Sequence[Result], *, durable: bool = True) -> list[Result]:
        """Write outcomes of rows this claim still holds; returns those written.

        In the same transaction: verdicts on tokens (``feedback.FEEDBACK``: dead or held)
        go to the stale-token table, delivered devices get ``last_delivered_at``. A
        retrying row gets its due time; the resumer dispatches it then. Not ``durable``:
        as ``claim``; a lost outcome leaves its row claimed, and it is sent again once
        the claim lapses.
        """
        if not results:
            return []
        by_id = {r.device.id: r for r in results}
        with self._pool.connection() as conn, conn.transaction():
            commit_not_waiting_unless(durable, conn)
            # the ids' range, as the primary key's second column: the plan reads only the
            # batch's rows whatever PostgreSQL believes of the notification's size (before
            # deliveries is analyzed, a new notification looks small: it hashed all of a
            # 100,000-device broadcast's rows on every flush, 30 ms against 2)
            written = conn.execute(
                """
                UPDATE deliveries dl
                   SET status = v.status, provider_status = v.code, reason = v.reason, claim_id = NULL,
                       due_at = now() + make_interval(secs => v.due_in), dispatches = 0, updated_at = now()
                  FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::float8[])
                       AS v(device_id, status, code, reason, due_in)
                 WHERE dl.notification_id = %s AND dl.device_id BETWEEN %s AND %s AND dl.device_id = v.device_id
                   AND dl.claim_id = %s AND dl.status = 'sending'
                RETURNING dl.device_id
                """,
                ([r.device.id for r in results], [r.status for r in results],
                 [getattr(r.outcome, "status", None) for r in results],
                 [getattr(r.outcome, "reason", None) for r in results], [r.due_in for r in results], nid,
                 min(by_id), max(by_id), claim_id),
            ).fetchall()
            mine = [by_id[row[0]] for row in written]
            delivered = [r.device.id for r in mine if r.status == "delivered"]
            if delivered:
                conn.execute("UPDATE devices SET last_delivered_at = now() WHERE id = ANY(%s)", (delivered,))
                # a held verdict's probe went through: the token was fine (our configuration was not)
                conn.execute("DELETE FROM stale_tokens WHERE device_id = ANY(%s) AND kind = 'hold'", (delivered,))
            _write_verdicts(conn, mine)
        return mine

    @transient
    def app_of(self, nid: str) -> str | None:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT app FROM notifications WHERE id = %s", (nid,)).fetchone()
        return None if row is None else str(row[0])

    @transient
    def owed_tokens(self, nid: str, platform: Platform, lo: int, hi: int) -> list[tuple[int, str]]:
        """(device id, token) of the claimable devices in the range: for a breaker per origin."""
        with self._pool.connection() as conn:
            return [(int(r[0]), str(r[1])) for r in conn.execute(
                f"""SELECT dl.device_id, d.token FROM deliveries dl JOIN devices d ON d.id = dl.device_id
                     WHERE {IN_RANGE} AND {CLAIMABLE}""", (nid, platform.value, lo, hi)).fetchall()]

    @transient
    def park(self, nid: str, platform: Platform, lo: int, hi: int, wait: float, spread: float,
             devices: Sequence[int] | None = None) -> int:
        """A breaker is open: the range's claimable rows (or only ``devices``) wait in
        PostgreSQL, unclaimed and their attempt not counted, due again ``wait`` seconds from
        now plus a random share of ``spread`` each, so they do not all return at once."""
        with self._pool.connection() as conn:
            return conn.execute(
                f"""UPDATE deliveries dl SET status = 'retrying', claim_id = NULL, updated_at = now(),
                           due_at = now() + make_interval(secs => %s + random() * %s)
                     WHERE {IN_RANGE} AND {CLAIMABLE} AND (%s::bigint[] IS NULL OR dl.device_id = ANY(%s))""",
                (wait, spread, nid, platform.value, lo, hi, None if devices is None else list(devices),
                 None if devices is None else list(devices)),
            ).rowcount

    @transient
    def add_provider_target(self, nid: str, name: str, grace: float) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                """INSERT INTO deliveries (notification_id, device_id, platform, token_tail, due_at)
                   VALUES (%s, %s, 'fcm', %s, now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING""",
                (nid, PROVIDER_TARGET_DEVICE, name[-6:], grace),
            )

    @transient
    def claim_provider_target(self, nid: str, lease: timedelta = CLAIM_LEASE,
                              retry_window: float = 3600.0) -> TargetClaim | None:
        """Claim the one row of a provider-side send (an FCM topic or condition)."""
        with self._pool.connection() as conn, conn.transaction():
            head = conn.execute(
                "SELECT app, payload, provider_target, extract(epoch FROM expires_at - now())"
                " FROM notifications WHERE id = %s",
                (nid,),
            ).fetchone()
            if head is None:
                return None
            where = f"dl.notification_id = %s AND dl.device_id = {PROVIDER_TARGET_DEVICE} AND {CLAIMABLE}"
            if float(head[3]) <= 0:
                conn.execute(f"UPDATE deliveries dl SET status = 'expired', reason = 'ttl passed' WHERE {where}",
                             (nid,))
                return None
            claim_id = str(uuid.uuid4())
            row = conn.execute(
                f"""UPDATE deliveries dl SET status = 'sending', claim_id = %s, due_at = now() + %s,
                           attempts = attempts + 1, first_tried_at = coalesce(first_tried_at, now()),
                           updated_at = now()
                     WHERE {where} RETURNING attempts, first_tried_at + make_interval(secs => %s) > now()""",
                (claim_id, lease, nid, retry_window),
            ).fetchone()
        if row is None:
            return None
        target = audience_from_json(head[2])
        assert isinstance(target, FcmTopic | FcmCondition)
        return TargetClaim(_sendable(Notification.from_json(head[1]), float(head[3])), head[0], target, row[0],
                           claim_id, bool(row[1]), float(head[3]))

    # -- reading -------------------------------------------------------------------

    @transient
    def status(self, nid: str, *, failures: bool = True) -> Status | None:
        """Counts by status and (``failures``) the first 1,000 failed devices. A poll that
        only needs the counts skips the second scan of the notification's rows."""
        with self._pool.connection() as conn:
            head = conn.execute(
                "SELECT app, created_at, fanout_done_at IS NOT NULL FROM notifications WHERE id = %s", (nid,)
            ).fetchone()
            if head is None:
                return None
            counts: dict[str, int] = dict(
                conn.execute(
                    "SELECT status, count(*) FROM deliveries WHERE notification_id = %s GROUP BY status", (nid,)
                ).fetchall()
            )
            failed = [
                Failure(*r)
                for r in conn.execute(
                    """
                    SELECT device_id, platform, token_tail, status, provider_status, reason, attempts
                      FROM deliveries WHERE notification_id = %s AND status NOT IN ('delivered', 'pending', 'sending')
                     ORDER BY device_id LIMIT 1000
                    """,
                    (nid,),
                ).fetchall()
            ] if failures else []
            fallbacks = [FallbackRow(*r) for r in conn.execute(
                "SELECT user_id, status, reason, detail FROM fallbacks WHERE notification_id = %s"
                " ORDER BY user_id LIMIT 1000", (nid,)).fetchall()] if failures else []
        return Status(nid, head[0], head[1], head[2], counts, failed, fallbacks)


def _settle_unsendable(conn: Connection[TupleRow], nid: str, platform: Platform, lo: int, hi: int,
                       max_attempts: int) -> None:
    """Claimable rows that must not be sent: skipped (device gone or stale) or failed (tried enough)."""
    args = (nid, platform.value, lo, hi)
    conn.execute(
        f"""
        UPDATE deliveries dl SET status = 'skipped', reason = 'device removed or stale', claim_id = NULL,
               updated_at = now()
         WHERE {IN_RANGE} AND {CLAIMABLE}
           AND (NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = dl.device_id)
                OR EXISTS (SELECT 1 FROM stale_tokens s JOIN devices d ON d.id = s.device_id
                            WHERE s.device_id = dl.device_id AND {SUPPRESSES}))
        """,
        args,
    )
    conn.execute(
        f"""UPDATE deliveries dl SET status = 'failed', claim_id = NULL, updated_at = now(),
                   reason = 'gave up after ' || dl.attempts || ' attempts, ' || dl.lapses
                            || ' of them in batches that never finished'
             WHERE {IN_RANGE} AND {CLAIMABLE} AND (dl.attempts >= %s OR dl.lapses >= %s)""",
        (*args, max_attempts, MAX_LAPSES),
    )


# The verdict now is the one before, repeated: same kind, and the token was not registered
# again in between (a re-registration voids a verdict; what follows starts afresh).
REPEATED = """stale_tokens.kind = EXCLUDED.kind
              AND (SELECT d.registered_at FROM devices d WHERE d.id = stale_tokens.device_id)
                  <= stale_tokens.learned_at"""


def _write_verdicts(conn: Connection[TupleRow], results: Sequence[Result]) -> None:
    verdicts = [
        (r.device.id, r.device.app, r.device.platform.value, r.device.token, getattr(r.outcome, "reason", ""),
         r.outcome.since if isinstance(r.outcome, DeadToken) else None, effect.value)
        for r in results
        if r.device.id != PROVIDER_TARGET_DEVICE and (effect := feedback(r.outcome).token) is not TokenEffect.KEEP
    ]
    if not verdicts:
        return
    with conn.cursor() as cur:
        cur.executemany(
            f"""
            INSERT INTO stale_tokens (device_id, app, platform, token, reason, provider_since, kind)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (device_id) DO UPDATE
               SET reason = EXCLUDED.reason, provider_since = EXCLUDED.provider_since, kind = EXCLUDED.kind,
                   learned_at = now(),
                   repeats = CASE WHEN {REPEATED} THEN stale_tokens.repeats + 1 ELSE 1 END,
                   first_learned_at = CASE WHEN {REPEATED} THEN stale_tokens.first_learned_at ELSE now() END
            """,
            verdicts,
        )
