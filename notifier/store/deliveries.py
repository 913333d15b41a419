"""Deliveries: claiming what a batch owes, recording outcomes, reading a notification's status."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from notifier.feedback import Result, TokenEffect, feedback
from notifier.model import Device, FcmCondition, FcmTopic, Notification, Platform, audience_from_json
from notifier.outcomes import DeadToken
from notifier.store.base import (
    CLAIM_LEASE,
    PROVIDER_TARGET_DEVICE,
    STANDS,
    Claim,
    Failure,
    Status,
    StoreBase,
    TargetClaim,
    transient,
)


class DeliveryQueries(StoreBase):
    @transient
    def claim(self, nid: str, platform: Platform, lo: int, hi: int, lease: timedelta = CLAIM_LEASE) -> Claim | None:
        """Take the devices in [lo, hi] still owed this notification.

        Rows already delivered, or claimed by a live batch, are skipped: that is what
        makes a redelivered task send nothing twice. Past its TTL, rows become 'expired'.
        """
        with self._pool.connection() as conn, conn.transaction():
            head = conn.execute(
                "SELECT app, payload, expires_at < now() FROM notifications WHERE id = %s", (nid,)
            ).fetchone()
            if head is None:
                return None
            app, payload, expired = head
            owed = "(dl.status IN ('pending', 'retrying') OR (dl.status = 'sending' AND dl.claimed_until < now()))"
            if expired:
                conn.execute(
                    f"""UPDATE deliveries dl SET status = 'expired', reason = 'ttl passed', updated_at = now()
                         WHERE notification_id = %s AND platform = %s AND device_id BETWEEN %s AND %s AND {owed}""",
                    (nid, platform.value, lo, hi),
                )
                return Claim(Notification.from_json(payload), app, True, [], {})
            rows = conn.execute(
                f"""
                UPDATE deliveries dl
                   SET status = 'sending', claimed_until = now() + %s, attempts = attempts + 1,
                       updated_at = now()
                  FROM devices d
                 WHERE dl.notification_id = %s AND dl.platform = %s
                   AND dl.device_id BETWEEN %s AND %s AND d.id = dl.device_id AND {owed}
                   AND NOT EXISTS (SELECT 1 FROM stale_tokens s WHERE s.device_id = d.id AND {STANDS})
                RETURNING d.id, d.app, d.token, d.p256dh, d.auth, dl.attempts
                """,
                (lease, nid, platform.value, lo, hi),
            ).fetchall()
            busy = conn.execute(
                """SELECT max(claimed_until) FROM deliveries
                    WHERE notification_id = %s AND platform = %s AND device_id BETWEEN %s AND %s
                      AND status = 'sending' AND claimed_until >= now() AND NOT (device_id = ANY(%s))""",
                (nid, platform.value, lo, hi, [r[0] for r in rows]),
            ).fetchone()
            # Devices removed (or declared dead) since fan-out are owed nothing.
            conn.execute(
                f"""
                UPDATE deliveries dl SET status = 'skipped', reason = 'device removed or stale', updated_at = now()
                 WHERE dl.notification_id = %s AND dl.platform = %s AND dl.device_id BETWEEN %s AND %s AND {owed}
                   AND (NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = dl.device_id)
                        OR EXISTS (SELECT 1 FROM stale_tokens s JOIN devices d ON d.id = s.device_id
                                    WHERE s.device_id = dl.device_id AND {STANDS}))
                """,
                (nid, platform.value, lo, hi),
            )
        devices = [Device(r[0], r[1], platform, r[2], r[3], r[4]) for r in sorted(rows)]
        attempts = {r[0]: r[5] for r in rows}
        return Claim(Notification.from_json(payload), app, False, devices, attempts, busy[0] if busy else None)

    @transient
    def record(self, nid: str, results: Sequence[Result]) -> None:
        """Write each device's outcome and status; in the same transaction, put verdicts
        on the token (``feedback.FEEDBACK``: dead or held) in the stale-token table and
        give delivered devices ``last_delivered_at``."""
        if not results:
            return
        ids = [r.device.id for r in results]
        statuses = [r.status for r in results]
        codes = [getattr(r.outcome, "status", None) for r in results]
        reasons = [getattr(r.outcome, "reason", None) for r in results]
        delivered = [r.device.id for r in results if r.status == "delivered"]
        verdicts = [
            (r.device.id, r.device.app, r.device.platform.value, r.device.token, getattr(r.outcome, "reason", ""),
             r.outcome.since if isinstance(r.outcome, DeadToken) else None, effect.value)
            for r in results
            if r.device.id != PROVIDER_TARGET_DEVICE and (effect := feedback(r.outcome).token) is not TokenEffect.KEEP
        ]
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                """
                UPDATE deliveries dl
                   SET status = v.status, provider_status = v.code, reason = v.reason,
                       claimed_until = NULL, updated_at = now()
                  FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[]) AS v(device_id, status, code, reason)
                 WHERE dl.notification_id = %s AND dl.device_id = v.device_id
                """,
                (ids, statuses, codes, reasons, nid),
            )
            if delivered:
                conn.execute("UPDATE devices SET last_delivered_at = now() WHERE id = ANY(%s)", (delivered,))
            if verdicts:
                with conn.cursor() as cur:
                    cur.executemany(
                        """
                        INSERT INTO stale_tokens (device_id, app, platform, token, reason, provider_since, kind)
                        VALUES (%s, %s, %s, %s, %s, %s, %s)
                        ON CONFLICT (device_id) DO UPDATE
                           SET reason = EXCLUDED.reason, provider_since = EXCLUDED.provider_since,
                               kind = EXCLUDED.kind, learned_at = now()
                        """,
                        verdicts,
                    )

    @transient
    def add_provider_target(self, nid: str, name: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                """INSERT INTO deliveries (notification_id, device_id, platform, token_tail)
                   VALUES (%s, %s, 'fcm', %s) ON CONFLICT DO NOTHING""",
                (nid, PROVIDER_TARGET_DEVICE, name[-6:]),
            )

    @transient
    def claim_provider_target(self, nid: str) -> TargetClaim | None:
        """Claim the one row of a provider-side send (an FCM topic or condition)."""
        with self._pool.connection() as conn, conn.transaction():
            head = conn.execute(
                "SELECT app, payload, provider_target, expires_at < now() FROM notifications WHERE id = %s", (nid,)
            ).fetchone()
            if head is None:
                return None
            owed = "(status IN ('pending', 'retrying') OR (status = 'sending' AND claimed_until < now()))"
            if head[3]:
                conn.execute(f"UPDATE deliveries SET status = 'expired', reason = 'ttl passed' "
                             f"WHERE notification_id = %s AND device_id = %s AND {owed}", (nid, PROVIDER_TARGET_DEVICE))
                return None
            row = conn.execute(
                f"""UPDATE deliveries SET status = 'sending', claimed_until = now() + %s, attempts = attempts + 1,
                           updated_at = now()
                     WHERE notification_id = %s AND device_id = %s AND {owed} RETURNING attempts""",
                (CLAIM_LEASE, nid, PROVIDER_TARGET_DEVICE),
            ).fetchone()
        if row is None:
            return None
        target = audience_from_json(head[2])
        assert isinstance(target, FcmTopic | FcmCondition)
        return TargetClaim(Notification.from_json(head[1]), head[0], target, row[0])

    @transient
    def release(self, nid: str, device_ids: Sequence[int]) -> None:
        """Give claimed devices back untouched (a parked batch): 'retrying', attempt not counted."""
        with self._pool.connection() as conn:
            conn.execute(
                """UPDATE deliveries SET status = 'retrying', claimed_until = NULL, attempts = attempts - 1,
                          updated_at = now()
                    WHERE notification_id = %s AND device_id = ANY(%s) AND status = 'sending'""",
                (nid, list(device_ids)),
            )

    # -- reading -------------------------------------------------------------------

    @transient
    def status(self, nid: str) -> Status | None:
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
            failures = [
                Failure(*r)
                for r in conn.execute(
                    """
                    SELECT device_id, platform, token_tail, status, provider_status, reason, attempts
                      FROM deliveries WHERE notification_id = %s AND status NOT IN ('delivered', 'pending', 'sending')
                     ORDER BY device_id LIMIT 1000
                    """,
                    (nid,),
                ).fetchall()
            ]
        return Status(nid, head[0], head[1], head[2], counts, failures)

    @transient
    def stranded(self, lapsed_for: timedelta) -> list[tuple[str, Platform, int, int]]:
        """(notification, platform, first, last device id) of claims that lapsed long ago.

        A task that died without being redelivered (it failed, or its message was lost
        with a broker) leaves its devices 'sending'; nobody else comes back for them.
        """
        with self._pool.connection() as conn:
            rows = conn.execute(
                """SELECT notification_id::text, platform, min(device_id), max(device_id) FROM deliveries
                    WHERE status = 'sending' AND claimed_until < now() - %s
                    GROUP BY 1, 2 LIMIT 1000""",
                (lapsed_for,),
            ).fetchall()
        return [(r[0], Platform(r[1]), r[2], r[3]) for r in rows]
