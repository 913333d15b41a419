"""The stale-token sweep and the token report.

The sweep removes the devices whose dead-token verdict stands (``store.STANDS``) and the
devices neither registered again nor delivered to for ``inactive_days``, in batches of
``BATCH`` rows per transaction (``FOR UPDATE SKIP LOCKED``: a registration waits for at
most one small batch, and two sweeps running at once take disjoint rows, so together
they remove exactly what one would). Every removal is logged in ``removed_devices``;
in archive mode with the full token, so it can be restored.

The mass-invalidation guard holds removal of dead tokens for an app when an unusual
share of its tokens was declared dead within ``guard_window``: suppression still
applies (nothing is sent to them), but nothing is removed until an operator runs
``notifier sweep --confirm APP`` (remove them) or ``--release APP`` (void the
verdicts: the cause, say a sandbox key in production, was ours and is fixed).

Held verdicts (``kind = 'hold'``: APNs DeviceTokenNotForTopic, FCM SENDER_ID_MISMATCH,
see ``feedback``) are never removed by the sweep: they are suppressed until an operator
confirms (``--confirm APP`` turns them into dead verdicts) or releases them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from psycopg import Connection
from psycopg.rows import TupleRow

from notifier.config import Settings
from notifier.store import STANDS, Store

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class SweepReport:
    removed_dead: dict[str, int] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    voided: int = 0
    held: dict[str, int] = field(default_factory=dict)  # app -> verdicts waiting for an operator


def _remove(conn: Connection[TupleRow], cause: str, where: str, params: tuple[object, ...],
            archive: bool) -> dict[str, int]:
    """Remove one batch of devices matching ``where`` (over d, s), log them; count per app."""
    keep_token = "d.token, d.p256dh, d.auth" if archive else "NULL, NULL, NULL"
    rows = conn.execute(
        f"""
        WITH doomed AS (
            SELECT d.id FROM devices d LEFT JOIN stale_tokens s ON s.device_id = d.id
             WHERE {where} ORDER BY d.id LIMIT {BATCH} FOR UPDATE OF d SKIP LOCKED
        ), gone AS (
            DELETE FROM devices d USING doomed WHERE d.id = doomed.id
            RETURNING d.id, d.app, d.platform, d.user_id, d.token, d.p256dh, d.auth, d.registered_at
        ), logged AS (
            INSERT INTO removed_devices (device_id, app, platform, user_id, token, p256dh, auth, token_tail,
                                         cause, reason, registered_at)
            SELECT d.id, d.app, d.platform, d.user_id, {keep_token}, right(d.token, 6), %s, s.reason, d.registered_at
              FROM gone d LEFT JOIN stale_tokens s ON s.device_id = d.id
            ON CONFLICT (device_id) DO NOTHING
            RETURNING app
        )
        SELECT app, count(*) FROM logged GROUP BY app
        """,
        (*params, cause),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def _guard(conn: Connection[TupleRow], app: str, settings: Settings) -> int | None:
    """Return the number of held verdicts when the app's dead tokens must wait for an operator."""
    hold = conn.execute("SELECT confirmed_at FROM sweep_holds WHERE app = %s", (app,)).fetchone()
    recent, devices = conn.execute(
        """SELECT (SELECT count(*) FROM stale_tokens
                    WHERE app = %s AND kind = 'dead' AND learned_at > now() - make_interval(secs => %s)),
                  (SELECT count(*) FROM devices WHERE app = %s)""",
        (app, settings.guard_window, app),
    ).fetchone() or (0, 0)
    if hold is None:
        share = recent / devices if devices else 0.0
        if recent < settings.guard_min_verdicts or share < settings.guard_share:
            return None
        conn.execute("INSERT INTO sweep_holds (app, verdicts, devices) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                     (app, recent, devices))
        log.error(
            "mass invalidation held for app %s: %d of its %d tokens declared dead within %ds; nothing is removed "
            "until `notifier sweep --confirm %s` (remove them) or `notifier sweep --release %s` (they were live: "
            "check the APNs environment, the FCM sender and the VAPID key first)",
            app, recent, devices, settings.guard_window, app, app,
        )
    elif hold[0] is not None:
        return None  # confirmed: remove what was declared up to the confirmation
    pending = conn.execute("SELECT count(*) FROM stale_tokens WHERE app = %s AND kind = 'dead'", (app,)).fetchone()
    return int(pending[0]) if pending else 0


def sweep(store: Store, settings: Settings) -> SweepReport:
    report = SweepReport()
    archive = settings.sweep_mode == "archive"
    with store.pool.connection() as conn:
        conn.autocommit = True
        # Verdicts the app has overruled by registering the token again, or whose device is gone.
        cur = conn.execute(
            f"DELETE FROM stale_tokens s USING devices d WHERE s.device_id = d.id AND NOT ({STANDS})")
        report.voided = cur.rowcount
        apps = [r[0] for r in conn.execute("SELECT DISTINCT app FROM stale_tokens UNION SELECT app FROM sweep_holds")]
        for app in apps:
            held = _guard(conn, app, settings)
            if held is not None:
                report.held[app] = held
                continue
            confirmed = conn.execute("SELECT confirmed_at FROM sweep_holds WHERE app = %s", (app,)).fetchone()
            cutoff: datetime | None = confirmed[0] if confirmed else None
            where = f"d.app = %s AND s.device_id IS NOT NULL AND s.kind = 'dead' AND {STANDS}"
            params: tuple[object, ...] = (app,)
            if cutoff is not None:
                where += " AND s.learned_at <= %s"
                params = (app, cutoff)
            _drain(conn, "dead", where, params, archive, report.removed_dead)
            if cutoff is not None:
                conn.execute("DELETE FROM sweep_holds WHERE app = %s", (app,))
        # inactive: neither registered again nor delivered to for inactive_days (a site that
        # registers a subscription once still reaches it every day)
        inactive = "greatest(d.registered_at, d.last_delivered_at) < now() - make_interval(days => %s)"
        _drain(conn, "inactive", inactive, (settings.inactive_days,), archive, report.expired)
        conn.execute("DELETE FROM stale_tokens s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)")
    for app, n in report.removed_dead.items():
        log.info("sweep: removed %d dead tokens of app %s", n, app)
    return report


def _drain(conn: Connection[TupleRow], cause: str, where: str, params: tuple[object, ...],
           archive: bool, counts: dict[str, int]) -> None:
    """Remove batch after batch, each in its own short transaction, until none is left."""
    while True:
        with conn.transaction():
            batch = _remove(conn, cause, where, params, archive)
        if not batch:
            return
        for app, n in batch.items():
            counts[app] = counts.get(app, 0) + n


def confirm(store: Store, app: str) -> bool:
    """An operator confirms a held mass invalidation, or the app's held verdicts: the next
    sweep removes those tokens. False when the app has neither."""
    with store.pool.connection() as conn, conn.transaction():
        holds = conn.execute("UPDATE sweep_holds SET confirmed_at = now() WHERE app = %s", (app,)).rowcount
        held = conn.execute("UPDATE stale_tokens SET kind = 'dead' WHERE app = %s AND kind = 'hold'", (app,)).rowcount
        return holds + held > 0


def release(store: Store, app: str) -> int:
    """An operator voids a held mass invalidation: the tokens were live; send to them again."""
    with store.pool.connection() as conn, conn.transaction():
        cur = conn.execute("DELETE FROM stale_tokens WHERE app = %s", (app,))
        conn.execute("DELETE FROM sweep_holds WHERE app = %s", (app,))
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


def report(store: Store) -> list[TokenRow]:
    """Per app and platform: the numbers `notifier tokens` prints."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            f"""
            WITH keys AS (
                SELECT app, platform FROM devices UNION SELECT app, platform FROM removed_devices
            ), dev AS (
                SELECT d.app, d.platform,
                       count(*) FILTER (WHERE s.device_id IS NULL OR NOT ({STANDS})) AS active,
                       count(*) FILTER (WHERE s.device_id IS NOT NULL AND {STANDS}) AS suppressed,
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
                   EXISTS (SELECT 1 FROM sweep_holds h WHERE h.app = k.app AND h.confirmed_at IS NULL),
                   dev.oldest
              FROM keys k LEFT JOIN dev USING (app, platform) LEFT JOIN gone USING (app, platform)
             ORDER BY 1, 2
            """
        ).fetchall()
    return [TokenRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], float(r[8]) if r[8] is not None else None)
            for r in rows]
