"""``notifier doctor``: all OK on a healthy setup (the suite's, with its worker); each broken
part named in one line, and exit code 1."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from notifier.cli import main as cli
from tests.integration.conftest import ENV


def doctor(monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["doctor", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, {c["name"]: c for c in json.loads(result.output)["checks"]}


def test_a_healthy_setup_is_all_ok(monkeypatch, worker) -> None:
    from tests.integration.conftest import wait_until

    # the suite's worker may still be starting: healthy once it answers on every queue
    code, checks = wait_until(lambda: (r := doctor(monkeypatch))[0] == 0 and r, timeout=30,
                              what="doctor to find the setup healthy")
    assert {"postgresql", "redis", "testapp/webpush key", "testapp/apns key", "testapp/apns endpoint",
            "testapp/fcm service account", "testapp/fcm endpoint", "queue apns", "queue transactional"} <= set(checks)
    assert "gets an OAuth token" in checks["testapp/fcm service account"]["detail"]


@pytest.fixture
def broken_apps(tmp_path: Path) -> Path:
    """The suite's apps file with a VAPID key that is not one and an APNs endpoint nobody listens on."""
    source = Path(ENV["NOTIFIER_APPS"])
    for f in source.parent.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    (tmp_path / "vapid.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    text = (tmp_path / source.name).read_text()
    text = re.sub(r'(\[apps\.testapp\.apns\][^\[]*endpoint = )"[^"]*"', r'\1"https://127.0.0.1:1"', text)
    (tmp_path / source.name).write_text(text)
    return tmp_path / source.name


def test_each_broken_part_is_one_line(monkeypatch, broken_apps) -> None:
    missing = ENV["DATABASE_URL"].rsplit("/", 1)[0] + "/notifier_doctor_missing"
    code, checks = doctor(monkeypatch, "--no-workers", NOTIFIER_APPS=str(broken_apps), DATABASE_URL=missing)
    assert code == 1
    assert "VAPID private key" in checks["testapp/webpush key"]["detail"] and not checks["testapp/webpush key"]["ok"]
    assert "127.0.0.1:1 is not reachable" in checks["testapp/apns endpoint"]["detail"]
    assert "does not exist" in checks["postgresql"]["detail"] and "migrate --create" in checks["postgresql"]["detail"]
    assert checks["testapp/fcm service account"]["ok"] and checks["redis"]["ok"]  # the rest still checked

    code, checks = doctor(monkeypatch, "--no-workers", DATABASE_URL="postgresql://127.0.0.1:1/notifier")
    assert code == 1 and "not reachable at 127.0.0.1:1" in checks["postgresql"]["detail"]
    for c in checks.values():
        assert "\n" not in c["detail"]
