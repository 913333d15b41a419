"""Outcome retention: tables that stay small.

Every delivery writes a row, and a daily broadcast to a million devices adds 365 million
a year. ``purge`` deletes what is older than ``retention_days`` (and past its TTL): the
notifications and their delivery rows, and the sweep's removal log past both its
retention and its restore period (in delete mode; archive mode keeps that log for good).

Nothing is deleted in one long transaction. Old notifications are found through
``notifications_created`` a few at a time; each one's deliveries go ``CHUNK`` rows per
statement through the primary key (a cascade from the notification would delete a
million rows in one statement, holding its locks and WAL for minutes); the notification
row goes last, once it has none. Each statement is its own transaction, so a purge can
stop anywhere (``budget``, a crash) and the next one carries on where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from psycopg import Connection
from psycopg.rows import TupleRow

from notifier.config import Settings
from notifier.store import Store

CHUNK = 5000  # delivery rows per DELETE statement
NOTIFICATIONS_PER_QUERY = 100

# The oldest notifications past retention and past their TTL (served by notifications_created).
OLD_NOTIFICATIONS = """
    SELECT id FROM notifications
     WHERE created_at < now() - make_interval(days => %s) AND expires_at < now()
     ORDER BY created_at LIMIT %s
"""
# One chunk of one notification's deliveries (served by the primary key's prefix).
DELIVERY_CHUNK = """
    DELETE FROM deliveries WHERE (notification_id, device_id) IN (
        SELECT notification_id, device_id FROM deliveries WHERE notification_id = %s LIMIT %s)
"""
# The sweep's log of removals, past retention and restore both (served by removed_devices_removed_at).
OLD_REMOVALS = """
    DELETE FROM removed_devices WHERE device_id IN (
        SELECT device_id FROM removed_devices
         WHERE removed_at < now() - make_interval(days => %s) ORDER BY removed_at LIMIT %s)
"""


@dataclass
class PurgeReport:
    notifications: int = 0
    deliveries: int = 0
    removals: int = 0
    statements: int = 0
    largest_statement: int = 0  # rows deleted by the largest single statement (<= CHUNK)
    finished: bool = True  # False: the budget ran out first; the next purge goes on


def purge(store: Store, settings: Settings, *, budget: float = 60.0, chunk: int = CHUNK) -> PurgeReport:
    """Delete outcomes older than ``settings.retention_days``, for at most ``budget`` seconds."""
    report = PurgeReport()
    end = time.monotonic() + budget
    with store.pool.connection() as conn:
        conn.autocommit = True  # each statement its own short transaction
        while True:
            old = [r[0] for r in conn.execute(OLD_NOTIFICATIONS,
                                              (settings.retention_days, NOTIFICATIONS_PER_QUERY)).fetchall()]
            if not old:
                break
            for nid in old:
                if not _purge_notification(conn, str(nid), chunk, end, report):
                    report.finished = False
                    return report
        if settings.sweep_mode == "delete":
            keep_days = max(settings.retention_days, settings.restore_days)
            while time.monotonic() < end:
                n = _count(report, conn.execute(OLD_REMOVALS, (keep_days, chunk)).rowcount)
                report.removals += n
                if n < chunk:
                    break
            else:
                report.finished = False
    return report


def _purge_notification(conn: Connection[TupleRow], nid: str, chunk: int, end: float, report: PurgeReport) -> bool:
    while True:
        if time.monotonic() > end:
            return False
        n = _count(report, conn.execute(DELIVERY_CHUNK, (nid, chunk)).rowcount)
        report.deliveries += n
        if n < chunk:
            break
    # none left (a late fan-out page cannot add any: past its TTL the fan-out is long done)
    report.notifications += _count(report, conn.execute("DELETE FROM notifications WHERE id = %s", (nid,)).rowcount)
    return True


def _count(report: PurgeReport, rows: int) -> int:
    report.statements += 1
    report.largest_statement = max(report.largest_statement, rows)
    return rows
