"""A user's preferences and the rules the fan-out applies to each page of delivery rows:
local send times, opt-outs, quiet hours, the frequency cap's skips, collapsing; and
cancelling what is not sent yet.

A rule's verdict is a row's status and reason, so ``notifier status`` says why each
device was skipped or when it will be sent: ``skipped`` (opted out, quiet hours,
frequency cap, collapsed) or ``scheduled`` (due at its local time or the end of quiet
hours; ``resume_owed`` releases it then).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time

from notifier.model import LocalTime
from notifier.preferences import Category
from notifier.store.base import StoreBase, transient

UNSET = object()  # set_preferences: leave this preference as it is

# Per 'judging' row (written by the fan-out, never claimed or released before this): its
# send instant ("at": now, or the notification's local time in the user's zone: the next
# one after the notify() call, however long the fan-out takes), then the verdict; every
# row judged leaves 'judging'. %(…)s parameters: nid, lo, hi, zone, day, clock, since,
# category, quiet.
_RULES = """
WITH page AS (
    SELECT dl.device_id, coalesce(p.time_zone, %(zone)s) AS tz, p.quiet_start AS qs, p.quiet_end AS qe,
           coalesce(%(category)s::text = ANY(p.opted_out), false) AS opted_out
      FROM deliveries dl JOIN devices d ON d.id = dl.device_id
      LEFT JOIN user_prefs p ON p.app = d.app AND p.user_id = d.user_id
     WHERE dl.notification_id = %(nid)s AND dl.device_id BETWEEN %(lo)s AND %(hi)s AND dl.status = 'judging'
), timed AS (
    SELECT page.*, CASE
             WHEN %(clock)s::time IS NULL THEN now()
             WHEN %(day)s::date IS NOT NULL THEN (%(day)s::date + %(clock)s::time) AT TIME ZONE tz
             WHEN ((%(since)s AT TIME ZONE tz)::date + %(clock)s::time) AT TIME ZONE tz > %(since)s
               THEN ((%(since)s AT TIME ZONE tz)::date + %(clock)s::time) AT TIME ZONE tz
             ELSE ((%(since)s AT TIME ZONE tz)::date + 1 + %(clock)s::time) AT TIME ZONE tz
           END AS at
      FROM page
), judged AS (
    SELECT timed.*, (qs IS NOT NULL AND %(quiet)s <> 'ignore' AND CASE
             WHEN qs < qe THEN (at AT TIME ZONE tz)::time >= qs AND (at AT TIME ZONE tz)::time < qe
             ELSE (at AT TIME ZONE tz)::time >= qs OR (at AT TIME ZONE tz)::time < qe END) AS quiet,
           CASE WHEN ((at AT TIME ZONE tz)::date + qe) AT TIME ZONE tz > at
                THEN ((at AT TIME ZONE tz)::date + qe) AT TIME ZONE tz
                ELSE ((at AT TIME ZONE tz)::date + 1 + qe) AT TIME ZONE tz END AS quiet_end
      FROM timed
)
UPDATE deliveries dl SET
       status = CASE WHEN j.opted_out OR (j.quiet AND %(quiet)s = 'drop') THEN 'skipped'
                     WHEN j.quiet OR j.at > now() THEN 'scheduled' ELSE 'pending' END,
       reason = CASE WHEN j.opted_out THEN 'opted out of ' || %(category)s
                     WHEN j.quiet AND %(quiet)s = 'drop' THEN 'quiet hours'
                     WHEN j.quiet THEN 'deferred by quiet hours'
                     WHEN j.at > now() THEN 'scheduled for ' || to_char(j.at AT TIME ZONE j.tz, 'YYYY-MM-DD HH24:MI')
                                            || ' ' || j.tz
                     ELSE dl.reason END,
       due_at = CASE WHEN j.quiet THEN j.quiet_end WHEN j.at > now() THEN j.at ELSE dl.due_at END,
       updated_at = now()
  FROM judged j
 WHERE dl.notification_id = %(nid)s AND dl.device_id = j.device_id
"""


class RuleQueries(StoreBase):
    @transient
    def set_preferences(self, app: str, user: str, *, time_zone: object = UNSET,
                        quiet_hours: object = UNSET, opt_out: object = UNSET) -> None:
        """Upsert a user's preferences; what is left UNSET keeps its stored value. Checked
        values only (``api.set_preferences`` checks them)."""
        quiet: tuple[time, time] | None = None if quiet_hours is UNSET else quiet_hours  # type: ignore[assignment]
        fields = {"time_zone": time_zone is not UNSET, "quiet": quiet_hours is not UNSET,
                  "opt_out": opt_out is not UNSET}
        with self._pool.connection() as conn:
            conn.execute(
                """
                INSERT INTO user_prefs (app, user_id, time_zone, quiet_start, quiet_end, opted_out)
                VALUES (%(app)s, %(user)s, %(tz)s, %(qs)s, %(qe)s, coalesce(%(out)s::text[], '{}'))
                ON CONFLICT (app, user_id) DO UPDATE SET
                    time_zone = CASE WHEN %(set_tz)s THEN EXCLUDED.time_zone ELSE user_prefs.time_zone END,
                    quiet_start = CASE WHEN %(set_q)s THEN EXCLUDED.quiet_start ELSE user_prefs.quiet_start END,
                    quiet_end = CASE WHEN %(set_q)s THEN EXCLUDED.quiet_end ELSE user_prefs.quiet_end END,
                    opted_out = CASE WHEN %(set_out)s THEN EXCLUDED.opted_out ELSE user_prefs.opted_out END,
                    updated_at = now()
                """,
                {"app": app, "user": user, "tz": None if time_zone is UNSET else time_zone,
                 "qs": quiet[0] if quiet else None, "qe": quiet[1] if quiet else None,
                 "out": None if opt_out is UNSET else list(opt_out),  # type: ignore[call-overload]
                 "set_tz": fields["time_zone"], "set_q": fields["quiet"], "set_out": fields["opt_out"]},
            )

    @transient
    def apply_rules(self, nid: str, lo: int, hi: int, *, local_at: LocalTime | None, category: Category,
                    zone: str, since: datetime) -> None:
        """The page's 'judging' rows (device ids ``lo``..``hi``) judged by their users'
        preferences: opted out or dropped by quiet hours -> skipped; due later (local time,
        deferred by quiet hours) -> scheduled until then; the rest -> pending. Rows already
        judged (or released) are not judged again."""
        with self._pool.connection() as conn:
            conn.execute(_RULES, {
                "nid": nid, "lo": lo, "hi": hi, "zone": zone, "category": category.name or None,
                "quiet": category.quiet_hours, "clock": local_at.at if local_at else None,
                "day": local_at.day if local_at else None, "since": since})

    @transient
    def page_users(self, nid: str, lo: int, hi: int) -> list[str]:
        """The users of the page's rows still to be sent (the frequency cap counts them)."""
        with self._pool.connection() as conn:
            return [r[0] for r in conn.execute(
                """SELECT DISTINCT d.user_id FROM deliveries dl JOIN devices d ON d.id = dl.device_id
                    WHERE dl.notification_id = %s AND dl.device_id BETWEEN %s AND %s
                      AND dl.status IN ('pending', 'scheduled')""", (nid, lo, hi))]

    @transient
    def skip_users(self, nid: str, lo: int, hi: int, users: Sequence[str], reason: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute(
                """UPDATE deliveries dl SET status = 'skipped', reason = %s, updated_at = now()
                     FROM devices d
                    WHERE dl.notification_id = %s AND dl.device_id BETWEEN %s AND %s AND d.id = dl.device_id
                      AND d.user_id = ANY(%s) AND dl.status IN ('pending', 'scheduled')""",
                (reason, nid, lo, hi, list(users))).rowcount

    @transient
    def collapse(self, nid: str, app: str, collapse_key: str, window: float, lo: int, hi: int) -> int:
        """Earlier notifications with the same collapse key, within ``window`` seconds, that
        the page's devices are still owed: skipped, collapsed into this one."""
        with self._pool.connection() as conn:
            return conn.execute(
                """
                UPDATE deliveries o SET status = 'skipped', reason = 'collapsed into ' || %(nid)s, claim_id = NULL,
                       updated_at = now()
                  FROM notifications n, notifications me
                 WHERE me.id = %(nid)s AND n.app = %(app)s AND n.collapse_key = %(key)s AND n.id <> me.id
                   AND n.created_at >= me.created_at - make_interval(secs => %(window)s)
                   AND n.created_at <= me.created_at
                   AND o.notification_id = n.id AND o.status IN ('pending', 'scheduled')
                   AND o.device_id IN (SELECT device_id FROM deliveries WHERE notification_id = %(nid)s
                                         AND device_id BETWEEN %(lo)s AND %(hi)s
                                         AND status IN ('pending', 'scheduled'))
                """,
                {"nid": nid, "app": app, "key": collapse_key, "window": window, "lo": lo, "hi": hi}).rowcount

    @transient
    def cancel(self, nid: str) -> tuple[bool, int] | None:
        """Cancel what is not sent yet: the fan-out if it has not finished, and every row
        waiting or not yet claimed (a batch on its way finds it cancelled when it claims).
        A critical notification's fallbacks not yet sent are cancelled too. Returns (the
        fan-out was still to come, deliveries and fallbacks cancelled); None for an unknown id."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT fanout_done_at IS NULL FROM notifications WHERE id = %s FOR UPDATE",
                               (nid,)).fetchone()
            if row is None:
                return None
            conn.execute("""UPDATE notifications SET cancelled_at = coalesce(cancelled_at, now()),
                                   fanout_done_at = coalesce(fanout_done_at, now()) WHERE id = %s""", (nid,))
            rows = conn.execute(
                """UPDATE deliveries SET status = 'cancelled', reason = 'cancelled', claim_id = NULL, updated_at = now()
                    WHERE notification_id = %s AND status IN ('pending', 'scheduled', 'judging')""",
                (nid,)).rowcount
            rows += conn.execute("UPDATE fallbacks SET status = 'cancelled', updated_at = now()"
                                 " WHERE notification_id = %s AND status IN ('waiting', 'dispatching')",
                                 (nid,)).rowcount
            return bool(row[0]), rows
