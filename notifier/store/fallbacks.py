"""Critical notifications' fallbacks: a row per user waits out the confirmation window;
then the user is confirmed (a device Delivered) or owed the fallback, dispatched once.

``waiting`` -> ``confirmed`` | ``dispatching`` (leased while its task is published)
-> ``sent`` (and, for a webhook, its answer in ``detail``) | ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from notifier.model import Notification
from notifier.store.base import StoreBase, transient

# A dispatching row whose publish was not confirmed within this is dispatched again.
DISPATCH_LEASE = timedelta(seconds=60)
MAX_DISPATCHES = 5


@dataclass(frozen=True, slots=True)
class DueFallback:
    notification_id: str
    app: str
    user_id: str
    reason: str
    attempts: int
    notification: Notification


class FallbackQueries(StoreBase):
    @transient
    def add_fallbacks(self, nid: str, app: str, within: int, *, users: Sequence[str] | None = None,
                      lo: int = 0, hi: int = 0) -> int:
        """One waiting row per user: ``users`` (a user list: users with no device too), or
        the users of the page's delivery rows (device ids ``lo``..``hi``). The window opens
        when the user's last device is due (a scheduled send: its local time). Idempotent."""
        with self._pool.connection() as conn:
            if users is not None:
                return conn.execute(
                    """
                    INSERT INTO fallbacks (notification_id, user_id, device_ids, due_at)
                    SELECT %(nid)s, u, array(SELECT id FROM devices WHERE app = %(app)s AND user_id = u),
                           greatest(now(), (SELECT max(dl.due_at) FROM deliveries dl
                                              JOIN devices d ON d.id = dl.device_id
                                             WHERE dl.notification_id = %(nid)s AND d.app = %(app)s
                                               AND d.user_id = u AND dl.status = 'scheduled'))
                           + make_interval(secs => %(within)s)
                      FROM unnest(%(users)s::text[]) AS u
                    ON CONFLICT DO NOTHING
                    """, {"nid": nid, "app": app, "users": list(users), "within": within}).rowcount
            return conn.execute(
                """
                INSERT INTO fallbacks (notification_id, user_id, device_ids, due_at)
                SELECT %(nid)s, d.user_id, array_agg(d.id),
                       greatest(now(), max(dl.due_at) FILTER (WHERE dl.status = 'scheduled'))
                       + make_interval(secs => %(within)s)
                  FROM deliveries dl JOIN devices d ON d.id = dl.device_id
                 WHERE dl.notification_id = %(nid)s AND dl.device_id BETWEEN %(lo)s AND %(hi)s
                 GROUP BY d.user_id
                ON CONFLICT (notification_id, user_id) DO UPDATE
                   SET device_ids = (SELECT array_agg(DISTINCT x) FROM unnest(fallbacks.device_ids
                                                                               || EXCLUDED.device_ids) AS x)
                """, {"nid": nid, "lo": lo, "hi": hi, "within": within}).rowcount

    @transient
    def take_due_fallbacks(self, limit: int = 500) -> list[DueFallback]:
        """Judge the rows whose window has passed: confirmed when a device of the user was
        Delivered; otherwise leased for dispatch, with the reason, and returned."""
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                """
                WITH due AS (
                    SELECT notification_id, user_id, device_ids FROM fallbacks
                     WHERE status IN ('waiting', 'dispatching') AND due_at <= now()
                     ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
                ), judged AS (
                    SELECT due.notification_id, due.user_id,
                           count(dl.device_id) FILTER (WHERE dl.status = 'delivered') AS delivered,
                           count(dl.device_id) AS devices,
                           count(dl.device_id) FILTER (WHERE dl.status = 'dead') AS dead,
                           string_agg(DISTINCT dl.status, ', ') AS statuses
                      FROM due LEFT JOIN deliveries dl
                        ON dl.notification_id = due.notification_id AND dl.device_id = ANY(due.device_ids)
                     GROUP BY due.notification_id, due.user_id
                )
                UPDATE fallbacks f SET
                       status = CASE WHEN j.delivered > 0 THEN 'confirmed'
                                     WHEN f.attempts >= %(max)s THEN 'failed' ELSE 'dispatching' END,
                       reason = CASE WHEN j.delivered > 0 THEN NULL
                                     WHEN j.devices = 0 THEN 'no device'
                                     WHEN j.dead = j.devices THEN 'every device dead'
                                     ELSE 'none delivered in time (' || j.statuses || ')' END,
                       detail = CASE WHEN j.delivered = 0 AND f.attempts >= %(max)s
                                     THEN 'not dispatched after ' || f.attempts || ' tries' ELSE f.detail END,
                       attempts = f.attempts + (j.delivered = 0)::int,
                       due_at = now() + %(lease)s, updated_at = now()
                  FROM judged j, notifications n
                 WHERE f.notification_id = j.notification_id AND f.user_id = j.user_id AND n.id = f.notification_id
                RETURNING f.notification_id::text, n.app, f.user_id, f.status, f.reason, f.attempts, n.payload
                """, {"limit": limit, "max": MAX_DISPATCHES, "lease": DISPATCH_LEASE}).fetchall()
        return [DueFallback(r[0], r[1], r[2], r[4], r[5], Notification.from_json(r[6]))
                for r in rows if r[3] == "dispatching"]

    @transient
    def fallback_done(self, nid: str, user: str, status: str, detail: str) -> None:
        """``sent`` once its task is published (or its webhook answered), ``failed`` when
        the webhook refused it for good. A webhook's answer, once recorded, stays the
        row's detail (its task may finish before the dispatcher records the publish)."""
        with self._pool.connection() as conn:
            conn.execute("UPDATE fallbacks SET status = %s, updated_at = now(),"
                         " detail = CASE WHEN detail LIKE 'webhook %%' AND %s NOT LIKE 'webhook %%' THEN detail"
                         " ELSE %s END"
                         " WHERE notification_id = %s AND user_id = %s AND status IN ('dispatching', 'sent')",
                         (status, detail, detail, nid, user))
