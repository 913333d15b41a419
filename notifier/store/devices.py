"""Devices, topics and the fan-out: who a notification is for, in keyset pages."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import timedelta

from psycopg import Connection, Cursor
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from notifier.model import (
    CheckedToken,
    Everyone,
    FanOut,
    FcmCondition,
    FcmTopic,
    NotifyRequest,
    Platform,
    Topic,
    Users,
    audience_to_json,
)
from notifier.store.base import StoreBase, commit_not_waiting_unless, transient


class DeviceQueries(StoreBase):
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

    def register_many(self, app: str, rows: Sequence[tuple[str, Platform, CheckedToken]]) -> tuple[int, int]:
        """``register`` for many checked rows (one per token) in one transaction; returns
        (inserted, updated)."""
        return self.register_csv(app, import_csv(rows))

    @transient
    def register_csv(self, app: str, text: str) -> tuple[int, int]:
        """``register_many`` for rows already written by ``import_csv`` (a checking process
        can write them): COPY into a temporary table, then one upsert."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS device_import (user_id text, platform text, token text,"
                         " p256dh text, auth text) ON COMMIT DELETE ROWS")
            with conn.cursor() as cur, cur.copy("COPY device_import FROM STDIN (FORMAT csv)") as copy:
                copy.write(text)
            counts: dict[bool, int] = dict(conn.execute(
                """
                WITH upserted AS (
                    INSERT INTO devices (app, user_id, platform, token, p256dh, auth)
                    SELECT %s, user_id, platform, token, p256dh, auth FROM device_import
                    ON CONFLICT (app, platform, token) DO UPDATE
                       SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh,
                           auth = EXCLUDED.auth, registered_at = now()
                    RETURNING xmax = 0 AS inserted
                )
                SELECT inserted, count(*) FROM upserted GROUP BY inserted
                """,
                (app,),
            ).fetchall())
        return int(counts.get(True, 0)), int(counts.get(False, 0))

    @transient
    def unregister(self, app: str, platform: Platform, token: str) -> bool:
        """Forget the device, and any removal of the same token the sweep logged: a device
        its user unregistered never comes back through ``notifier tokens --restore``."""
        args = (app, platform.value, token)
        with self._pool.connection() as conn, conn.transaction():
            cur = conn.execute("DELETE FROM devices WHERE app = %s AND platform = %s AND token = %s", args)
            conn.execute("DELETE FROM removed_devices WHERE app = %s AND platform = %s AND token = %s", args)
            return cur.rowcount > 0

    # -- notifications and fan-out -------------------------------------------------

    @transient
    def create_notification(self, request: NotifyRequest, *, grace: float) -> str | None:
        """Store the notification once; return the fingerprint stored for its id (the one
        given now, or the first call's when the id was already there; None for a
        notification stored before fingerprints were kept).

        Until a fan-out claims it, the row waits ``grace`` seconds for one; after that the
        resumer starts its fan-out (the task that should have may be lost).
        """
        with self._pool.connection() as conn:
            _create(conn, request, grace)
            row = conn.execute("SELECT fingerprint FROM notifications WHERE id = %s", (request.id,)).fetchone()
        assert row is not None
        return None if row[0] is None else str(row[0])

    @transient
    def claim_fanout(self, nid: str, owner: str, lease: timedelta) -> int | None:
        """Become the notification's one fan-out; return its cursor, or None when the fan-out
        is finished or another live one owns it."""
        with self._pool.connection() as conn:
            return _cursor(_claim_fanout(conn, nid, owner, lease).fetchone())

    @transient
    def add_users(self, nid: str, app: str, users: Sequence[str], due_in: float, *, judged: bool = True) -> int:
        """Write the delivery rows of these users' devices (a slice of a user list); each
        user is looked up once per notification, through ``devices (app, user_id)``.
        Idempotent. Returns the rows added."""
        with self._pool.connection() as conn:
            return _add_users(conn, nid, app, users, due_in, judged)

    @transient
    def begin_fanout(self, request: NotifyRequest, owner: str, lease: timedelta, *, grace: float,
                     users: Sequence[str] = (), judged: bool = True, durable: bool = True) -> int | None:
        """``create_notification``, ``claim_fanout`` and, once claimed, ``add_users(users)``
        in one transaction, its statements sent together (a pipeline): one round trip and
        one commit where there were six and three.

        Not ``durable``: as ``commit_not_waiting_unless``. A lost notification: the
        caller must find out (``app_of`` is None) before its task is acknowledged, and
        start again.
        """
        with self._pool.connection() as conn:
            with conn.pipeline(), conn.transaction():
                commit_not_waiting_unless(durable, conn)
                _create(conn, request, grace)
                claimed = _claim_fanout(conn, request.id, owner, lease)
                if users:  # only once claimed: the statement checks the owner it set
                    _add_users(conn, request.id, request.app, users, grace, judged, owner=owner)
            return _cursor(claimed.fetchone())

    @transient
    def fan_out_page(self, nid: str, app: str, audience: FanOut, after: int, limit: int, grace: float,
                     *, judged: bool = True, platform: Platform | None = None) -> dict[Platform, tuple[int, int]]:
        """The next page of the audience, by device id: its delivery rows written (a topic,
        everyone) or already there (users: ``add_users`` wrote them all first, so the user
        list is handed to PostgreSQL once, not with every page).

        Returns, per platform, the (first, last) device id of this page; empty when the
        audience is exhausted. Idempotent: a page done twice adds no row. Not ``judged``:
        the rows wait as 'judging' (never claimed or released) until ``apply_rules``.
        ``platform``: only that platform's devices (a page per platform, each paced by its
        own channel queue).
        """
        only = platform.value if platform else audience.platform.value if isinstance(
            audience, Everyone) and audience.platform else None
        with self._pool.connection() as conn, conn.transaction():
            if isinstance(audience, Users):
                rows = conn.execute(
                    """SELECT device_id, platform FROM deliveries WHERE notification_id = %s AND device_id > %s
                          AND (%s::text IS NULL OR platform = %s)
                        ORDER BY device_id LIMIT %s""",
                    (nid, after, only, only, limit),
                ).fetchall()
                return _ranges(rows)
            if isinstance(audience, Everyone):
                page = """SELECT id, platform, right(token, 6) AS tail FROM devices
                           WHERE app = %s AND id > %s AND (%s::text IS NULL OR platform = %s)
                           ORDER BY id LIMIT %s"""
                args: tuple[object, ...] = (app, after, only, only, limit)
            else:
                page = """SELECT d.id, d.platform, right(d.token, 6) AS tail
                            FROM topic_subscriptions t JOIN devices d ON d.id = t.device_id
                           WHERE t.app = %s AND t.topic = %s AND t.device_id > %s
                             AND (%s::text IS NULL OR d.platform = %s)
                           ORDER BY t.device_id LIMIT %s"""
                args = (app, audience.name, after, only, only, limit)
            # one statement a page: the rows never leave PostgreSQL (a statement per row
            # was most of what a fan-out cost it)
            rows = conn.execute(
                f"""
                WITH page AS ({page}),
                     added AS (INSERT INTO deliveries (notification_id, device_id, platform, token_tail, due_at, status)
                               SELECT %s, id, platform, tail, now() + make_interval(secs => %s), %s FROM page
                               ON CONFLICT DO NOTHING)
                SELECT id, platform FROM page ORDER BY id
                """,
                (*args, nid, grace, "pending" if judged else "judging"),
            ).fetchall()
            if not rows:
                return {}
        return _ranges(rows)

    @transient
    def advance_fanout(self, nid: str, owner: str, cursor: int, lease: timedelta, *, durable: bool = True) -> bool:
        """Move the cursor past a page and renew the lease; False when the fan-out lost it.
        Not ``durable``: as ``begin_fanout``."""
        return self._fanout_update("fanout_cursor = %s, fanout_until = now() + %s", (cursor, lease), nid, owner,
                                   durable, "AND fanout_done_at IS NULL")

    @transient
    def finish_fanout(self, nid: str, owner: str, *, durable: bool = True) -> bool:
        """Mark the fan-out done; False when it lost its lease (or its notification).
        Not ``durable``: as ``begin_fanout``."""
        return self._fanout_update("fanout_done_at = now()", (), nid, owner, durable)

    def _fanout_update(self, assignments: str, values: tuple[object, ...], nid: str, owner: str, durable: bool,
                       condition: str = "") -> bool:
        with self._pool.connection() as conn:
            with conn.pipeline(), conn.transaction():  # one round trip, its commit's wait as asked
                commit_not_waiting_unless(durable, conn)
                cur = conn.execute(f"UPDATE notifications SET {assignments} WHERE id = %s AND fanout_owner = %s"
                                   f" {condition}", (*values, nid, owner))
            return cur.rowcount > 0

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


# -- the fan-out's first statements, shared by the methods above and ``begin_fanout`` --

def _create(conn: Connection[TupleRow], request: NotifyRequest, grace: float) -> None:
    audience = request.audience
    users = list(audience.ids) if isinstance(audience, Users) else []
    topic = audience.name if isinstance(audience, Topic) else None
    target = Jsonb(audience_to_json(audience)) if isinstance(audience, FcmTopic | FcmCondition) else None
    everyone = (audience.platform.value if audience.platform else "*") if isinstance(audience, Everyone) else None
    release = request.release_at
    conn.execute(
        """
        INSERT INTO notifications (id, app, audience, topic, everyone, provider_target, payload, expires_at,
                                   fingerprint, send_at, local_at, release_at, collapse_key, fanout_until)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                greatest(%s, now() + make_interval(secs => %s)))
        ON CONFLICT (id) DO NOTHING
        """,
        (request.id, request.app, users, topic, everyone, target, Jsonb(request.notification.to_json()),
         request.expires_at, request.fingerprint(), request.send_at,
         str(request.local_at) if request.local_at else None, release, request.notification.collapse_key,
         release, grace),
    )


def _claim_fanout(conn: Connection[TupleRow], nid: str, owner: str, lease: timedelta) -> Cursor[TupleRow]:
    return conn.execute(
        """UPDATE notifications SET fanout_owner = %s, fanout_until = now() + %s
            WHERE id = %s AND fanout_done_at IS NULL AND (release_at IS NULL OR release_at <= now())
              AND (fanout_owner IS NULL OR fanout_until < now() OR fanout_owner = %s)
        RETURNING fanout_cursor""",
        (owner, lease, nid, owner),
    )


def _cursor(row: TupleRow | None) -> int | None:
    return None if row is None else int(row[0])


def _add_users(conn: Connection[TupleRow], nid: str, app: str, users: Sequence[str], due_in: float,
               judged: bool, *, owner: str | None = None) -> int:
    """``owner``: only if that fan-out owns the notification."""
    cur = conn.execute(
        """
        INSERT INTO deliveries (notification_id, device_id, platform, token_tail, due_at, status)
        SELECT %s, d.id, d.platform, right(d.token, 6), now() + make_interval(secs => %s), %s
          FROM devices d WHERE d.app = %s AND d.user_id = ANY(%s)
           AND (%s::text IS NULL OR EXISTS (SELECT 1 FROM notifications WHERE id = %s AND fanout_owner = %s))
        ON CONFLICT DO NOTHING
        """,
        (nid, due_in, "pending" if judged else "judging", app, list(users), owner, nid, owner),
    )
    return cur.rowcount


def _ranges(rows: Sequence[tuple[int, str]]) -> dict[Platform, tuple[int, int]]:
    """(device id, platform) rows in id order -> per platform, the first and last id."""
    ranges: dict[Platform, tuple[int, int]] = {}
    for device_id, platform in rows:
        p = Platform(platform)
        lo, _hi = ranges.get(p, (device_id, device_id))
        ranges[p] = (lo, device_id)
    return ranges


def import_csv(rows: Iterable[tuple[str, Platform, CheckedToken]]) -> str:
    """Checked rows as the CSV text ``register_csv`` copies in: written in one call (row by
    row, a loader thread beside a busy one waits for the GIL at every buffer flush)."""
    text = io.StringIO()
    csv.writer(text).writerows((user, platform.value, token.token, token.p256dh, token.auth)
                               for user, platform, token in rows)
    return text.getvalue()
