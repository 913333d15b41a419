"""The demo at DEBUG leaves no key material and no whole device token in any log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from notifier.logs import redact_text
from tests.integration.conftest import ENV


def key_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line.strip() and "-----" not in line]


@pytest.mark.timeout(300)
def test_demo_at_debug_logs_no_secret_and_no_full_token(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": ENV["DATABASE_URL"], "REDIS_URL": ENV["REDIS_URL"]}
    env.pop("NOTIFIER_APPS", None)
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "notifier.cli", "demo", "--json", "--log-level", "DEBUG",
                           "--workdir", str(work)], capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr + (work / "demo.log").read_text() + (work / "worker.log").read_text()
    assert logs.count("DEBUG") > 50  # it really logged at DEBUG

    tokens = json.loads((work / "devices.json").read_text())
    assert len(tokens) >= 20
    assert [t for t in tokens if t in logs] == []
    secrets = key_lines((work / "apns.p8").read_text()) + key_lines((work / "vapid.pem").read_text())
    secrets += key_lines(json.loads((work / "firebase.json").read_text())["private_key"])
    assert secrets and [s for s in secrets if s in logs] == []
    assert not re.search(r"eyJ[\w-]{5,}\.[\w-]{5,}\.", logs)  # no JWT (APNs provider token, OAuth assertion)
    assert "BEGIN PRIVATE KEY" not in logs and "BEGIN EC PRIVATE KEY" not in logs


def test_the_redaction_filter_rewrites_what_libraries_leak() -> None:
    token = "ab" * 32
    leaked = (f"HPACK encoding [(':path', '/3/device/{token}'), ('authorization', 'bearer eyJhbGciOi.eyJpc3MiOi.c2lnbmF0dXJl')]"
              " -----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----")
    clean = redact_text(leaked)
    assert token not in clean and token[-6:] in clean
    assert "eyJ" not in clean and "MIGHAgEAMBMG" not in clean
