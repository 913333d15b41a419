"""`notifier demo --json` end to end, as `make demo` runs it: its own worker, simulators and
database; the verdict comes from what the simulators received."""

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import ENV


@pytest.mark.timeout(300)
def test_demo_delivers_every_live_device_once_and_reports_every_dead_one() -> None:
    # The demo makes its own database on this server and takes another empty Redis db.
    env = {**os.environ, "DATABASE_URL": ENV["DATABASE_URL"], "REDIS_URL": ENV["REDIS_URL"]}
    for name in ("NOTIFIER_APPS", "NOTIFIER_CA_BUNDLE"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "notifier.cli", "demo", "--json"], capture_output=True, text=True,
                          timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    for name, ch in out["channels"].items():
        assert ch["delivered"] == ch["expected_live"] > 0, name
        assert ch["dead"] == ch["expected_dead"] > 0, name
        assert ch["duplicates"] == 0 and ch["failed"] == 0, name
    assert out["topic"]["delivered"] == out["topic"]["subscribers"] == 3
    # the exporter's send counters, scraped over HTTP, equal what the simulators answered
    metrics = out["metrics"]
    assert metrics["delivered"] == metrics["simulators_delivered"] and sum(metrics["delivered"].values()) > 0
    dead = {n: ch["dead"] for n, ch in out["channels"].items()}
    assert {c: metrics["sends"][c]["dead"] for c in metrics["sends"]} == dead
