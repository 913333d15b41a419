"""Is the database there, and is it ours? One connection, two seconds, one sentence.

Before a command opens its pool (which retries for a minute, as a worker should ride out
a restart), ``check_database`` tells a user's mistake from an outage: the server not
answering (which host and port), the database missing (``notifier migrate --create``),
the credentials refused, the schema missing or behind (``notifier migrate``). The URL's
password never appears in a message.
"""

from __future__ import annotations

import psycopg
from psycopg import conninfo
from psycopg.rows import TupleRow

from notifier.errors import StoreError
from notifier.migrate import available

CONNECT_TIMEOUT = 2  # seconds


def where(url: str) -> str:
    """host:port/dbname of a database URL, without its credentials."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unparsable DATABASE_URL)"
    return f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


def connect(url: str, *, dbname: str | None = None) -> psycopg.Connection[TupleRow]:
    """A connection within ``CONNECT_TIMEOUT``, or a StoreError saying what to do."""
    target = conninfo.make_conninfo(url, dbname=dbname) if dbname else url
    try:
        return psycopg.connect(target, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
    except psycopg.ProgrammingError:
        raise StoreError("DATABASE_URL is not a PostgreSQL URL (postgresql://user@host:5432/dbname)") from None
    except psycopg.OperationalError as exc:
        raise StoreError(_explain(exc, where(target))) from None


def _explain(exc: psycopg.OperationalError, at: str) -> str:
    """libpq's connection failure as a sentence; the server's FATAL (no SQLSTATE reaches
    psycopg for those) is read from the message."""
    server, dbname = at.rsplit("/", 1)
    fatal = str(exc).split("FATAL:", 1)[1].strip().splitlines()[0] if "FATAL:" in str(exc) else ""
    if fatal.startswith("database ") and fatal.endswith("does not exist"):
        return (f"database {dbname!r} does not exist on {server}: "
                f"run `notifier migrate --create` (or `createdb {dbname}`)")
    if "password authentication failed" in fatal or (fatal.startswith("role ") and "does not exist" in fatal):
        return f"PostgreSQL at {server} refused the user in DATABASE_URL: {fatal}"
    if fatal:
        return f"PostgreSQL at {server} refused the connection: {fatal}"
    return f"PostgreSQL is not reachable at {server}: start it, or point DATABASE_URL at it"


def check_database(url: str) -> None:
    """Raise StoreError unless the database answers and its schema is this version's."""
    with connect(url) as conn:
        if conn.execute("SELECT to_regclass('public.schema_migrations') IS NULL").fetchone() == (True,):
            raise StoreError(f"the database {where(url)} has no notifier schema: run `notifier migrate`")
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    have, need = (int(row[0]) if row else 0), max(v for v, _, _ in available())
    if have < need:
        raise StoreError(f"the database {where(url)} has schema version {have}, this notifier needs {need}: "
                         "run `notifier migrate`")
    if have > need:
        raise StoreError(f"the database {where(url)} has schema version {have}, newer than this notifier's {need}: "
                         "upgrade notifier")


def create_database(url: str) -> bool:
    """Create the URL's database when it is missing (through the server's ``postgres``
    database); True when it was created."""
    dbname = str(conninfo.conninfo_to_dict(url).get("dbname") or "")
    if not dbname:
        raise StoreError("DATABASE_URL names no database")
    with connect(url, dbname="postgres") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            return False
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    return True
