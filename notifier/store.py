"""The PostgreSQL token store: devices, notifications, deliveries, stale tokens.

One ``Store`` per process, over a psycopg connection pool. Audiences are read in keyset
pages (``id > last ORDER BY id LIMIT n``), never with OFFSET and never whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from notifier.errors import StoreError
from notifier.model import CheckedToken, Device, Notification, Platform
from notifier.outcomes import DeadToken, Outcome

log = logging.getLogger(__name__)

# A claimed batch may be sent again by another task once its claim is this old; the worker
# passes its batch budget (every batch finishes or is cancelled within it) plus a margin.
CLAIM_LEASE = timedelta(minutes=5)

# PostgreSQL restarting, a failover, a dropped connection: every store call is retried
# for up to a minute (each is one transaction, so a retry never applies anything twice).
transient = retry(
    retry=retry_if_exception_type((psycopg.OperationalError, PoolTimeout)),
    wait=wait_exponential(multiplier=0.2, max=2),
    stop=stop_after_delay(60),
    reraise=True,
)
# The least time a notification stays sendable after notify(), whatever its TTL.
TTL_GRACE = 30
# A dead-token verdict stands unless the app registered the token again after it: after
# Apple's timestamp where APNs gives one, else after we learned it. (SQL, over d and s.)
STANDS = "d.registered_at <= coalesce(s.provider_since, s.learned_at)"


@dataclass(frozen=True, slots=True)
class Audience:
    """Who a notification is for: users, one of our topics, or a provider-side target."""

    users: Sequence[str] = ()
    topic: str | None = None
    # {"fcm_topic": name} or {"fcm_condition": expr}: one request to FCM, no fan-out
    provider_target: dict[str, str] | None = None


# A provider-side target's one delivery row uses this device id (no device has it).
PROVIDER_TARGET_DEVICE = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """What one channel task must send: the notification and its devices still owed it."""

    notification: Notification
    app: str
    expired: bool
    devices: list[Device]
    # device id -> attempts so far, this one included
    attempts: dict[int, int]
    # when devices of this range are claimed by another live task: its lease's end
    busy_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    device_id: int
    platform: str
    token_tail: str
    status: str
    provider_status: int | None
    reason: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Status:
    notification_id: str
    app: str
    created_at: datetime
    fanout_done: bool
    counts: dict[str, int]
    failures: list[Failure]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def settled(self) -> bool:
        """Fan-out finished and no delivery is still pending, in flight or retrying."""
        busy = {"pending", "sending", "retrying"}
        return self.fanout_done and not any(self.counts.get(s) for s in busy)


class Store:
    def __init__(self, database_url: str, *, max_size: int = 4) -> None:
        self._pool = ConnectionPool(database_url, min_size=1, max_size=max_size, open=False, name="notifier",
                                    check=ConnectionPool.check_connection, reconnect_timeout=60)
        try:
            self._pool.open(wait=True, timeout=10)
        except psycopg.OperationalError as exc:
            raise StoreError(f"PostgreSQL is not reachable: {exc}") from None
        except Exception as exc:  # pool.open raises PoolTimeout on an unreachable server
            raise StoreError(f"PostgreSQL is not reachable at the configured DATABASE_URL: {exc}") from None

    @property
    def pool(self) -> ConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()

    # -- devices -----------------------------------------------------------------

    @transient
    def register(self, app: str, user: str, platform: Platform, token: CheckedToken) -> int:
        """Insert or move a device to ``user``; a known token is refreshed, never duplicated."""
        with self._pool.connection() as conn:
            row = conn.execute(
                """
                INSERT INTO devices (app, user_id, platform, token, p256dh, auth)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (app, platform, token) DO UPDATE
                   SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh,
                       auth = EXCLUDED.auth, registered_at = now()
                RETURNING id
                """,
                (app, user, platform.value, token.token, token.p256dh, token.auth),
            ).fetchone()
        assert row is not None
        return int(row[0])

    @transient
    def unregister(self, app: str, platform: Platform, token: str) -> bool:
        with self._pool.connection() as conn:
            cur = conn.execute(
                "DELETE FROM devices WHERE app = %s AND platform = %s AND token = %s",
                (app, platform.value, token),
            )
            return cur.rowcount > 0

    # -- notifications and fan-out -------------------------------------------------

    @transient
    def create_notification(self, nid: str, app: str, audience: Audience, n: Notification) -> int | None:
        """Store the notification once; return the fan-out cursor, or None when fan-out is done."""
        # A TTL of 0 means "now or never" to a provider, not "never": allow a short grace.
        expires = datetime.now(timezone.utc) + timedelta(seconds=max(n.ttl, TTL_GRACE))
        with self._pool.connection() as conn:
            conn.execute(
                """
                INSERT INTO notifications (id, app, audience, topic, provider_target, payload, expires_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING
                """,
                (nid, app, list(audience.users), audience.topic,
                 Jsonb(audience.provider_target) if audience.provider_target else None, Jsonb(n.to_json()), expires),
            )
            row = conn.execute(
                "SELECT fanout_cursor, fanout_done_at FROM notifications WHERE id = %s", (nid,)
            ).fetchone()
        assert row is not None
        return None if row[1] is not None else int(row[0])

    @transient
    def fan_out_page(
        self, nid: str, app: str, audience: Audience, after: int, limit: int
    ) -> dict[Platform, tuple[int, int]]:
        """Create delivery rows for the next page of the audience.

        Returns, per platform, the (first, last) device id of this page; empty when the
        audience is exhausted. Idempotent: a page done twice adds no row.
        """
        with self._pool.connection() as conn, conn.transaction():
            if audience.topic is not None:
                rows = conn.execute(
                    """
                    SELECT d.id, d.platform, right(d.token, 6)
                      FROM topic_subscriptions t JOIN devices d ON d.id = t.device_id
                     WHERE t.app = %s AND t.topic = %s AND t.device_id > %s
                     ORDER BY t.device_id LIMIT %s
                    """,
                    (app, audience.topic, after, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    """
                    SELECT id, platform, right(token, 6) FROM devices
                     WHERE app = %s AND user_id = ANY(%s) AND id > %s
                     ORDER BY id LIMIT %s
                    """,
                    (app, list(audience.users), after, limit),
                ).fetchall()
            if not rows:
                return {}
            with conn.cursor() as cur:
                cur.executemany(
                    """
                    INSERT INTO deliveries (notification_id, device_id, platform, token_tail)
                    VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING
                    """,
                    [(nid, r[0], r[1], r[2]) for r in rows],
                )
        ranges: dict[Platform, tuple[int, int]] = {}
        for device_id, platform, _ in rows:
            p = Platform(platform)
            lo, _hi = ranges.get(p, (device_id, device_id))
            ranges[p] = (lo, device_id)
        return ranges

    @transient
    def advance_fanout(self, nid: str, cursor: int) -> None:
        with self._pool.connection() as conn:
            conn.execute("UPDATE notifications SET fanout_cursor = %s WHERE id = %s", (cursor, nid))

    @transient
    def finish_fanout(self, nid: str) -> None:
        with self._pool.connection() as conn:
            conn.execute("UPDATE notifications SET fanout_done_at = now() WHERE id = %s", (nid,))

    # -- delivery ------------------------------------------------------------------

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
    def record(self, nid: str, results: Sequence[tuple[Device, Outcome, str]]) -> None:
        """Write each device's outcome; ``status`` overrides the outcome's own (a final retry).

        Dead tokens go to the stale-token table in the same transaction; delivered devices
        get ``last_delivered_at``.
        """
        if not results:
            return
        ids = [d.id for d, _, _ in results]
        statuses = [s for _, _, s in results]
        codes = [getattr(o, "status", None) for _, o, _ in results]
        reasons = [getattr(o, "reason", None) for _, o, _ in results]
        delivered = [d.id for d, _, s in results if s == "delivered"]
        dead = [(d, o) for d, o, _ in results if isinstance(o, DeadToken)]
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
            if dead:
                with conn.cursor() as cur:
                    cur.executemany(
                        """
                        INSERT INTO stale_tokens (device_id, app, platform, token, reason, provider_since)
                        VALUES (%s, %s, %s, %s, %s, %s)
                        ON CONFLICT (device_id) DO UPDATE
                           SET reason = EXCLUDED.reason, provider_since = EXCLUDED.provider_since,
                               learned_at = now()
                        """,
                        [(d.id, d.app, d.platform.value, d.token, o.reason, o.since) for d, o in dead],
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
    def claim_provider_target(self, nid: str) -> tuple[Notification, str, dict[str, str], int] | None:
        """Claim the one row of a provider-side send: (notification, app, target, attempts)."""
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
        return Notification.from_json(head[1]), head[0], head[2], row[0]

    # -- topics --------------------------------------------------------------------

    @transient
    def subscribe(self, app: str, topic: str, platform: Platform, token: str) -> bool:
        """Subscribe a registered device to one of our topics; False if it is not registered."""
        with self._pool.connection() as conn:
            cur = conn.execute(
                """
                INSERT INTO topic_subscriptions (app, topic, device_id)
                SELECT app, %s, id FROM devices WHERE app = %s AND platform = %s AND token = %s
                ON CONFLICT DO NOTHING RETURNING device_id
                """,
                (topic, app, platform.value, token),
            )
            if cur.fetchone() is not None:
                return True
            known = conn.execute(
                "SELECT 1 FROM devices WHERE app = %s AND platform = %s AND token = %s", (app, platform.value, token)
            ).fetchone()
        return known is not None

    @transient
    def unsubscribe(self, app: str, topic: str, platform: Platform, token: str) -> bool:
        with self._pool.connection() as conn:
            cur = conn.execute(
                """
                DELETE FROM topic_subscriptions t USING devices d
                 WHERE t.device_id = d.id AND t.app = %s AND t.topic = %s AND d.platform = %s AND d.token = %s
                """,
                (app, topic, platform.value, token),
            )
            return cur.rowcount > 0

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
            counts = dict(
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
