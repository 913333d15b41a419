"""A user's mistake is one line that says what to do, at once: no pool retrying for a
minute, no traceback. Each case is a real server answering (or not) the way it does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner

from harness.services import drop_database
from notifier.cli import main as cli
from notifier.migrate import available
from tests.integration.conftest import ENV

SERVER = ENV["DATABASE_URL"].rsplit("/", 1)[0]


def run(monkeypatch: pytest.MonkeyPatch, url: str, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("DATABASE_URL", url)
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result.exit_code, result.output


@pytest.fixture
def missing() -> Iterator[str]:
    """The URL of a database that does not exist (dropped again if a test creates it)."""
    name = f"notifier_missing_{uuid.uuid4().hex[:8]}"
    yield f"{SERVER}/{name}"
    drop_database(SERVER, name)


@pytest.mark.parametrize("command", [["tokens"], ["status", "00000000-0000-4000-8000-000000000000"], ["sweep"],
                                     ["purge"]])
def test_a_missing_database_says_how_to_create_it(monkeypatch, missing, command) -> None:
    code, out = run(monkeypatch, missing, *command)
    name = missing.rsplit("/", 1)[1]
    assert code == 1 and f"database '{name}' does not exist" in out and "notifier migrate --create" in out, out
    assert len(out.strip().splitlines()) == 1


def test_an_unreachable_server_names_host_and_port(monkeypatch) -> None:
    code, out = run(monkeypatch, "postgresql://127.0.0.1:1/notifier", "tokens")
    assert code == 1 and "not reachable at 127.0.0.1:1" in out, out


def test_migrate_create_makes_the_database_and_the_schema(monkeypatch, missing) -> None:
    code, out = run(monkeypatch, missing, "migrate")
    assert code == 1 and "notifier migrate --create" in out, out
    code, out = run(monkeypatch, missing, "migrate", "--create")
    assert code == 0 and "created database" in out and "applied: 0001_init.sql" in out, out
    code, out = run(monkeypatch, missing, "tokens", "--json")
    assert code == 0 and out.strip() == "[]", out


def test_a_schema_behind_says_run_migrate(monkeypatch, missing) -> None:
    run(monkeypatch, missing, "migrate", "--create")
    with psycopg.connect(missing, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (max(v for v, _, _ in available()),))
    code, out = run(monkeypatch, missing, "tokens")
    assert code == 1 and "schema version" in out and "run `notifier migrate`" in out, out
    with psycopg.connect(missing, autocommit=True) as conn:
        conn.execute("DROP TABLE schema_migrations")
    code, out = run(monkeypatch, missing, "tokens")
    assert code == 1 and "has no notifier schema: run `notifier migrate`" in out, out
