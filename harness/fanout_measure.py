"""Fan-out cost for a 100k-user audience among 200k devices, in a scratch database:
every page handing PostgreSQL the whole user list (how the fan-out worked before) against
``add_users`` once and paging the notification's delivery rows (how it works now).

    python -m harness.fanout_measure      # on the PostgreSQL server of $DATABASE_URL
"""

from __future__ import annotations

import os
import time
import uuid

import psycopg

from harness.services import create_database, drop_database
from notifier.migrate import migrate
from notifier.model import Users
from notifier.store import Store

SERVER = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
NAME = "notifier_fanout_measure"
PAGE = 500


def _notification(url: str) -> str:
    nid = str(uuid.uuid4())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO notifications (id, app, audience, payload, expires_at)"
                     " VALUES (%s, 'b', '{}', '{}', now() + interval '1 day')", (nid,))
    return nid


def _old(url: str, users: list[str]) -> None:
    nid, after, pages, queries = _notification(url), 0, 0, 0.0
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            q = time.perf_counter()
            rows = conn.execute("SELECT id, platform, right(token, 6) FROM devices WHERE app = 'b'"
                                " AND user_id = ANY(%s) AND id > %s ORDER BY id LIMIT %s",
                                (users, after, PAGE)).fetchall()
            queries += time.perf_counter() - q
            if not rows:
                break
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO deliveries (notification_id, device_id, platform, token_tail)"
                                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", [(nid, *r) for r in rows])
            after, pages = rows[-1][0], pages + 1
    print(f"old: {pages} pages in {time.perf_counter() - start:.1f} s "
          f"({queries:.1f} s in the page queries, {queries / pages * 1000:.0f} ms a page)")


def _new(url: str, users: list[str]) -> None:
    store, nid = Store(url), _notification(url)
    try:
        start = time.perf_counter()
        for s in range(0, len(users), 10_000):
            store.add_users(nid, "b", users[s:s + 10_000], 30)
        written = time.perf_counter() - start
        after, pages, audience = 0, 0, Users(tuple(users))
        while ranges := store.fan_out_page(nid, "b", audience, after, PAGE, 30):
            after, pages = max(hi for _, hi in ranges.values()), pages + 1
        total = time.perf_counter() - start
        print(f"new: rows written in {written:.1f} s, then {pages} pages in {total - written:.1f} s: {total:.1f} s")
    finally:
        store.close()


def main() -> None:
    try:
        drop_database(SERVER, NAME)
    except psycopg.Error:
        pass
    url = create_database(SERVER, NAME)
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO devices (app, user_id, platform, token) SELECT 'b', 'u' || i, 'apns',"
                         " md5(i::text) || md5((i + 1)::text) FROM generate_series(1, 200000) i")
            conn.execute("ANALYZE devices")
        users = [f"u{i}" for i in range(1, 200_001, 2)]  # 100k users, interleaved with 100k others
        _old(url, users)
        _new(url, users)
    finally:
        drop_database(SERVER, NAME)


if __name__ == "__main__":
    main()
