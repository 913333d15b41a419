"""Versioned schema migrations: ``notifier/migrations/NNNN_name.sql``, applied in order.

``migrate`` is safe to run twice and from two processes at once: it holds a PostgreSQL
advisory lock and records each applied version in ``schema_migrations``.
"""

from __future__ import annotations

from importlib import resources

import psycopg

_LOCK_ID = 0x6E6F7469  # "noti"


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration file, by version."""
    out = []
    for entry in resources.files("notifier.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


def migrate(database_url: str) -> list[str]:
    """Apply what is missing; return the names applied."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in available():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied
