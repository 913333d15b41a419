"""The stale-token sweep and its mass-invalidation guard.

The sweep removes the devices whose dead-token verdict stands (``store.STANDS``) and the
devices neither registered again nor delivered to for ``inactive_days`` (a slice of the
table per run, ``INACTIVE_SLICE``), in batches of
``BATCH`` rows per transaction (``FOR UPDATE SKIP LOCKED``: a registration waits for at
most one small batch, and two sweeps running at once take disjoint rows, so together
they remove exactly what one would). Every removal is logged in ``removed_devices`` with
its token and topics, restorable (``notifier tokens --restore``) for ``restore_days``
(in delete mode; archive mode keeps them for good).

The mass-invalidation guard decides per app *and platform*, over a sliding window
(``guard_window``, a day): it counts every dead verdict still waiting (however old) and
the removals already made in the window, against the platform's devices (an APNs sandbox/production mix-up
is every iOS token, however many Android devices the app has). When an unusual share was
declared dead, removal is held: suppression still applies (nothing is sent to them),
but nothing is removed until an operator runs ``notifier sweep --confirm APP`` (remove
them) or ``--release APP`` (void the verdicts: the cause was ours and is fixed). A
slow drip under the threshold per sweep adds up in the window and trips it all the same.

Held verdicts (``kind = 'hold'``: APNs DeviceTokenNotForTopic, FCM SENDER_ID_MISMATCH,
see ``feedback``) suppress the token for a day, then let one send through. Delivered, the
verdict is void; answered the same way again while other tokens of the app and platform
were delivered to around the same time, it becomes dead (``PROMOTE_HELD``). An operator may confirm
(``--confirm APP``) or release them at any time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from psycopg import Connection
from psycopg.rows import TupleRow

from notifier import metrics
from notifier.config import Settings
from notifier.store import HOLD_PROBE_HOURS, STANDS, Store

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class SweepReport:
    removed_dead: dict[str, int] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    voided: int = 0
    held: dict[str, int] = field(default_factory=dict)  # "app/platform" -> verdicts waiting for an operator
    scrubbed: int = 0  # removals past restore_days whose tokens were forgotten (delete mode)
    promoted: int = 0  # held verdicts that repeated and became dead


# A held verdict becomes dead when it came again a day or more after the first time, the
# token was never delivered to since, and other tokens of the same app and platform were
# delivered to within PEER_MINUTES of its latest failure: our credentials worked right
# then, so the mismatch is the token's. (Evidence from another time proves nothing: the
# credentials may have been broken again since, or fixed only after.) Without such a
# peer the verdict stays held and is tested again a day later. A promoted verdict is
# learned now, so the mass-invalidation guard counts it like any new dead verdict.
PEER_MINUTES = 15
PROMOTE_HELD = f"""
    UPDATE stale_tokens s SET kind = 'dead', learned_at = now()
      FROM devices d
     WHERE s.device_id = d.id AND s.kind = 'hold' AND s.repeats >= 2
       AND s.learned_at >= s.first_learned_at + interval '{HOLD_PROBE_HOURS} hours'
       AND (d.last_delivered_at IS NULL OR d.last_delivered_at < s.first_learned_at)
       AND EXISTS (SELECT 1 FROM devices o WHERE o.app = d.app AND o.platform = d.platform AND o.id <> d.id
                      AND o.last_delivered_at BETWEEN s.learned_at - interval '{PEER_MINUTES} minutes'
                                                  AND s.learned_at + interval '{PEER_MINUTES} minutes')
"""


def _remove(conn: Connection[TupleRow], cause: str, where: str, params: tuple[object, ...],
            confirmed: bool) -> dict[str, int]:
    """Remove one batch of devices matching ``where`` (over d, s), log them with their token
    and topics (restorable); count per app. ``confirmed``: an operator confirmed these."""
    rows = conn.execute(
        f"""
        WITH doomed AS (
            SELECT d.id FROM devices d LEFT JOIN stale_tokens s ON s.device_id = d.id
             WHERE {where} ORDER BY d.id LIMIT {BATCH} FOR UPDATE OF d SKIP LOCKED
        ), topics AS (
            SELECT t.device_id, array_agg(t.topic) AS topics
              FROM topic_subscriptions t JOIN doomed ON doomed.id = t.device_id GROUP BY t.device_id
        ), gone AS (
            DELETE FROM devices d USING doomed WHERE d.id = doomed.id
            RETURNING d.id, d.app, d.platform, d.user_id, d.token, d.p256dh, d.auth, d.registered_at
        ), logged AS (
            INSERT INTO removed_devices (device_id, app, platform, user_id, token, p256dh, auth, token_tail,
                                         cause, reason, registered_at, topics, confirmed)
            SELECT d.id, d.app, d.platform, d.user_id, d.token, d.p256dh, d.auth, right(d.token, 6), %s, s.reason,
                   d.registered_at, t.topics, %s
              FROM gone d LEFT JOIN stale_tokens s ON s.device_id = d.id LEFT JOIN topics t ON t.device_id = d.id
            ON CONFLICT (device_id) DO NOTHING
            RETURNING app
        )
        SELECT app, count(*) FROM logged GROUP BY app
        """,
        (*params, cause, confirmed),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def _guard(conn: Connection[TupleRow], app: str, platform: str, settings: Settings) -> int | None:
    """The number of held verdicts when the app's dead tokens on ``platform`` must wait for
    an operator; None when the sweep may remove them."""
    hold = conn.execute("SELECT confirmed_at FROM sweep_holds WHERE app = %s AND platform = %s",
                        (app, platform)).fetchone()
    if hold is not None and hold[0] is not None:
        return None  # confirmed: remove what was declared up to the confirmation
    if hold is None:
        waiting, removed, devices = conn.execute(
            """SELECT (SELECT count(*) FROM stale_tokens WHERE app = %(a)s AND platform = %(p)s AND kind = 'dead'),
                      (SELECT count(*) FROM removed_devices WHERE app = %(a)s AND platform = %(p)s
                         AND cause = 'dead' AND NOT confirmed AND removed_at > now() - make_interval(secs => %(w)s)),
                      (SELECT count(*) FROM devices WHERE app = %(a)s AND platform = %(p)s)""",
            {"a": app, "p": platform, "w": settings.guard_window},
        ).fetchone() or (0, 0, 0)
        verdicts, population = waiting + removed, devices + removed
        share = verdicts / population if population else 0.0
        if verdicts < settings.guard_min_verdicts or share < settings.guard_share:
            return None
        conn.execute("INSERT INTO sweep_holds (app, platform, verdicts, devices) VALUES (%s, %s, %s, %s)"
                     " ON CONFLICT DO NOTHING", (app, platform, verdicts, population))
        log.error(
            "mass invalidation held for app %s on %s: %d of its %d tokens declared dead within %ds; nothing is "
            "removed until `notifier sweep --confirm %s` (remove them) or `notifier sweep --release %s` (they were "
            "live: check the APNs environment, the FCM sender and the VAPID key first)",
            app, platform, verdicts, population, settings.guard_window, app, app,
        )
    pending = conn.execute("SELECT count(*) FROM stale_tokens WHERE app = %s AND platform = %s AND kind = 'dead'",
                           (app, platform)).fetchone()
    return int(pending[0]) if pending else 0


def sweep(store: Store, settings: Settings) -> SweepReport:
    report = SweepReport()
    with store.pool.connection() as conn:
        conn.autocommit = True
        # Verdicts the app has overruled by registering the token again, or whose device is gone.
        cur = conn.execute(
            f"DELETE FROM stale_tokens s USING devices d WHERE s.device_id = d.id AND NOT ({STANDS})")
        report.voided = cur.rowcount
        report.promoted = conn.execute(PROMOTE_HELD).rowcount
        keys = conn.execute("SELECT DISTINCT app, platform FROM stale_tokens WHERE kind = 'dead'"
                            " UNION SELECT app, platform FROM sweep_holds").fetchall()
        for app, platform in keys:
            held = _guard(conn, app, platform, settings)
            if held is not None:
                report.held[f"{app}/{platform}"] = held
                continue
            confirmed = conn.execute("SELECT confirmed_at FROM sweep_holds WHERE app = %s AND platform = %s",
                                     (app, platform)).fetchone()
            cutoff: datetime | None = confirmed[0] if confirmed else None
            where = f"d.app = %s AND d.platform = %s AND s.device_id IS NOT NULL AND s.kind = 'dead' AND {STANDS}"
            params: tuple[object, ...] = (app, platform)
            if cutoff is not None:
                where += " AND s.learned_at <= %s"
                params = (app, platform, cutoff)
            _drain(conn, "dead", where, params, cutoff is not None, report.removed_dead)
            if cutoff is not None:
                conn.execute("DELETE FROM sweep_holds WHERE app = %s AND platform = %s", (app, platform))
        _expire_inactive(conn, settings, report)
        conn.execute("DELETE FROM stale_tokens s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)")
        if settings.sweep_mode == "delete":
            report.scrubbed = conn.execute(
                "UPDATE removed_devices SET token = NULL, p256dh = NULL, auth = NULL, topics = NULL"
                " WHERE token IS NOT NULL AND removed_at < now() - make_interval(days => %s)",
                (settings.restore_days,)).rowcount
    for app, n in report.removed_dead.items():
        log.info("sweep: removed %d dead tokens of app %s", n, app)
        metrics.swept(app, "dead", n)
    for app, n in report.expired.items():
        metrics.swept(app, "inactive", n)
    return report


# Devices the inactivity pass looks at per sweep: a slice of the table in id order, from
# where the last sweep stopped (sweep_cursor), so its cost is the slice's at any table
# size. At the default sweep interval a million devices are all looked at every two
# hours; inactivity is counted in months.
INACTIVE_SLICE = 100_000
INACTIVE = "greatest(d.registered_at, d.last_delivered_at) < now() - make_interval(days => %s)"


def _expire_inactive(conn: Connection[TupleRow], settings: Settings, report: SweepReport) -> None:
    """Remove the devices neither registered again nor delivered to for ``inactive_days``
    (a site that registers a subscription once still reaches it every day), in the next
    slice of the devices table; wraps around at its end."""
    row = conn.execute("SELECT after FROM sweep_cursor WHERE name = 'inactive'").fetchone()
    after = int(row[0]) if row else 0
    last = conn.execute("SELECT max(id) FROM (SELECT id FROM devices WHERE id > %s ORDER BY id LIMIT %s) s",
                        (after, INACTIVE_SLICE)).fetchone()
    if last is None or last[0] is None:  # past the end: start again from the beginning
        after = 0
        last = conn.execute("SELECT max(id) FROM (SELECT id FROM devices ORDER BY id LIMIT %s) s",
                            (INACTIVE_SLICE,)).fetchone()
        if last is None or last[0] is None:
            return
    _drain(conn, "inactive", INACTIVE + " AND d.id > %s AND d.id <= %s",
           (settings.inactive_days, after, int(last[0])), False, report.expired)
    conn.execute("INSERT INTO sweep_cursor (name, after) VALUES ('inactive', %s)"
                 " ON CONFLICT (name) DO UPDATE SET after = EXCLUDED.after", (int(last[0]),))


def _drain(conn: Connection[TupleRow], cause: str, where: str, params: tuple[object, ...],
           confirmed: bool, counts: dict[str, int]) -> None:
    """Remove batch after batch, each in its own short transaction, until none is left."""
    while True:
        with conn.transaction():
            batch = _remove(conn, cause, where, params, confirmed)
        if not batch:
            return
        for app, n in batch.items():
            counts[app] = counts.get(app, 0) + n
