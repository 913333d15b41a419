"""What operators do with tokens: the report ``notifier tokens`` prints, and confirming,
releasing or restoring what the sweep holds or removed (``notifier sweep --confirm`` /
``--release``, ``notifier tokens --restore``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from notifier.store import STANDS, SUPPRESSES, Store

log = logging.getLogger(__name__)


# The rows of one app, or of one app and platform (``platform`` None: all of them).
_SCOPE = "app = %(app)s AND (%(platform)s::text IS NULL OR platform = %(platform)s)"


def confirm(store: Store, app: str, platform: str | None = None) -> bool:
    """An operator confirms a held mass invalidation, or the app's held verdicts (on one
    platform, or all): the next sweep removes those tokens. False when there are none."""
    scope = {"app": app, "platform": platform}
    with store.pool.connection() as conn, conn.transaction():
        holds = conn.execute(f"UPDATE sweep_holds SET confirmed_at = now() WHERE {_SCOPE}", scope).rowcount
        held = conn.execute(f"UPDATE stale_tokens SET kind = 'dead' WHERE {_SCOPE} AND kind = 'hold'",
                            scope).rowcount
        return holds + held > 0


def release(store: Store, app: str, platform: str | None = None) -> int:
    """An operator voids a held mass invalidation (on one platform, or all): the tokens
    were live; send to them again."""
    scope = {"app": app, "platform": platform}
    with store.pool.connection() as conn, conn.transaction():
        cur = conn.execute(f"DELETE FROM stale_tokens WHERE {_SCOPE}", scope)
        conn.execute(f"DELETE FROM sweep_holds WHERE {_SCOPE}", scope)
        return cur.rowcount


@dataclass(frozen=True)
class TokenRow:
    app: str
    platform: str
    active: int
    suppressed: int
    held_verdicts: int  # suppressed, waiting for an operator (not removed by the sweep)
    swept_last_day: int
    expired_last_day: int
    held: bool
    oldest_unswept_verdict_seconds: float | None


def restore(store: Store, app: str, since: datetime) -> int:
    """Put back the devices the sweep removed from ``app`` since ``since`` (dead or inactive),
    with their tokens and topics, as if registered now; returns how many came back.

    Only removals still within ``restore_days`` (or any, in archive mode) keep their token.
    A token registered again meanwhile (by its user, or now by another) is already back and
    is left as it is; its removal record stays until it is scrubbed. A device its user
    unregistered is not among them: unregistering forgets the token's removals.
    """
    with store.pool.connection() as conn, conn.transaction():
        row = conn.execute(
            """
            WITH back AS (
                SELECT device_id, app, platform, user_id, token, p256dh, auth, topics FROM removed_devices
                 WHERE app = %s AND removed_at >= %s AND token IS NOT NULL FOR UPDATE
            ), put AS (
                INSERT INTO devices (id, app, user_id, platform, token, p256dh, auth)
                SELECT device_id, app, user_id, platform, token, p256dh, auth FROM back
                ON CONFLICT DO NOTHING
                RETURNING id
            ), subscribed AS (
                INSERT INTO topic_subscriptions (app, topic, device_id)
                SELECT b.app, unnest(b.topics), b.device_id FROM back b JOIN put ON put.id = b.device_id
                ON CONFLICT DO NOTHING
            ), forgotten AS (
                DELETE FROM removed_devices r USING put WHERE r.device_id = put.id
            )
            SELECT count(*) FROM put
            """,
            (app, since),
        ).fetchone()
    restored = int(row[0]) if row else 0
    log.warning("restored %d devices of app %s removed since %s", restored, app, since.isoformat())
    return restored


def report(store: Store) -> list[TokenRow]:
    """Per app and platform: the numbers `notifier tokens` prints."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            f"""
            WITH keys AS (
                SELECT app, platform FROM devices UNION SELECT app, platform FROM removed_devices
            ), dev AS (
                SELECT d.app, d.platform,
                       count(*) FILTER (WHERE s.device_id IS NULL OR NOT ({SUPPRESSES})) AS active,
                       count(*) FILTER (WHERE s.device_id IS NOT NULL AND {SUPPRESSES}) AS suppressed,
                       count(*) FILTER (WHERE s.kind = 'hold' AND {STANDS}) AS held,
                       extract(epoch FROM now() - min(s.learned_at) FILTER (WHERE {STANDS})) AS oldest
                  FROM devices d LEFT JOIN stale_tokens s ON s.device_id = d.id GROUP BY 1, 2
            ), gone AS (
                SELECT app, platform,
                       count(*) FILTER (WHERE cause = 'dead') AS swept,
                       count(*) FILTER (WHERE cause = 'inactive') AS expired
                  FROM removed_devices WHERE removed_at > now() - interval '1 day' GROUP BY 1, 2
            )
            SELECT k.app, k.platform, coalesce(dev.active, 0), coalesce(dev.suppressed, 0), coalesce(dev.held, 0),
                   coalesce(gone.swept, 0), coalesce(gone.expired, 0),
                   EXISTS (SELECT 1 FROM sweep_holds h WHERE h.app = k.app AND h.platform = k.platform
                                  AND h.confirmed_at IS NULL),
                   dev.oldest
              FROM keys k LEFT JOIN dev USING (app, platform) LEFT JOIN gone USING (app, platform)
             ORDER BY 1, 2
            """
        ).fetchall()
    return [TokenRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], float(r[8]) if r[8] is not None else None)
            for r in rows]
