"""What is owed and has no owner: the resumer's two queries.

Rows that are due (``deliveries.due_at`` passed while pending, sending or retrying) and
fan-outs whose lease lapsed are handed back to the runtime to dispatch again. Each query
takes a bounded number at a time, ``FOR UPDATE SKIP LOCKED`` (two resumers at once take
disjoint work), and pushes the taken work's due time forward, doubling with each
dispatch, so work whose task is merely slow is not dispatched every round.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from notifier.model import LocalTime, Notification, NotifyRequest, audience_from_json
from notifier.store.base import PROVIDER_TARGET_DEVICE, StoreBase, transient


@dataclass(frozen=True, slots=True)
class DueRange:
    """Devices of one notification and platform to dispatch as one channel task."""

    notification_id: str
    platform: str
    first: int
    last: int

    @property
    def provider_target(self) -> bool:
        return self.first == PROVIDER_TARGET_DEVICE


class OwedQueries(StoreBase):
    @transient
    def take_due(self, *, limit: int, batch_size: int, grace: float) -> list[DueRange]:
        """Take up to ``limit`` due rows, make them pending again and return them as ranges
        of at most ``batch_size`` devices. A lapsed claim's holder can write nothing more,
        and the lapse is counted against the row (``MAX_LAPSES``)."""
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                """
                WITH due AS (
                    SELECT notification_id, device_id FROM deliveries
                     WHERE status IN ('pending', 'sending', 'retrying', 'scheduled') AND due_at <= now()
                     ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED
                )
                UPDATE deliveries dl
                   SET status = 'pending', claim_id = NULL, dispatches = least(dl.dispatches + 1, 100),
                       lapses = least(dl.lapses + (dl.status = 'sending')::int, 100),
                       due_at = now() + make_interval(secs => %s * power(2, least(dl.dispatches, 4)))
                  FROM due
                 WHERE dl.notification_id = due.notification_id AND dl.device_id = due.device_id
                RETURNING dl.notification_id::text, dl.platform, dl.device_id
                """,
                (limit, grace),
            ).fetchall()
        return _ranges(rows, batch_size)

    @transient
    def start_periodic(self, job: str, interval: float) -> bool:
        """True when ``job`` may run now: its last run started at least 90 % of ``interval``
        ago (or never). A second beat's dispatch of the same tick finds it started and is
        counted as skipped."""
        with self._pool.connection() as conn, conn.transaction():
            started = conn.execute(
                """INSERT INTO periodic_runs (job, last_started) VALUES (%s, now())
                   ON CONFLICT (job) DO UPDATE SET last_started = now(), runs = periodic_runs.runs + 1
                    WHERE periodic_runs.last_started <= now() - make_interval(secs => %s)
                   RETURNING job""",
                (job, 0.9 * interval),
            ).fetchone()
            if started is None:
                conn.execute("UPDATE periodic_runs SET skipped = skipped + 1 WHERE job = %s", (job,))
        return started is not None

    @transient
    def take_stalled_fanouts(self, *, limit: int, grace: float) -> list[NotifyRequest]:
        """Notifications whose fan-out stopped before the end (its owner stopped renewing)."""
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                """
                WITH stalled AS (
                    SELECT id FROM notifications
                     WHERE fanout_done_at IS NULL AND fanout_until < now()
                     ORDER BY fanout_until LIMIT %s FOR UPDATE SKIP LOCKED
                )
                UPDATE notifications n
                   SET fanout_owner = NULL, fanout_dispatches = least(n.fanout_dispatches + 1, 100),
                       fanout_until = now() + make_interval(secs => %s * power(2, least(n.fanout_dispatches, 4)))
                  FROM stalled WHERE n.id = stalled.id
                RETURNING n.id::text, n.app, n.audience, n.topic, n.everyone, n.provider_target, n.payload,
                          n.created_at,
                          n.send_at, n.local_at
                """,
                (limit, grace),
            ).fetchall()
        return [_request(*row) for row in rows]


def _request(nid: str, app: str, users: list[str], topic: str | None, everyone: str | None,
             target: dict[str, str] | None, payload: dict[str, object], created_at: datetime,
             send_at: datetime | None, local_at: str | None) -> NotifyRequest:
    raw: dict[str, object]
    if target:
        raw = dict(target)
    elif topic is not None:
        raw = {"topic": topic}
    elif everyone is not None:
        raw = {"everyone": True if everyone == "*" else everyone}
    else:
        raw = {"users": users}
    return NotifyRequest(nid, app, audience_from_json(raw), Notification.from_json(payload), created_at,
                         send_at=send_at, local_at=LocalTime.parse(local_at) if local_at else None)


def _ranges(rows: list[tuple[str, str, int]], batch_size: int) -> list[DueRange]:
    by_key: dict[tuple[str, str], list[int]] = {}
    for nid, platform, device_id in rows:
        by_key.setdefault((nid, platform), []).append(device_id)
    out: list[DueRange] = []
    for (nid, platform), ids in by_key.items():
        ids.sort()
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            out.append(DueRange(nid, platform, chunk[0], chunk[-1]))
    return out
