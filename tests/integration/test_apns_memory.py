"""A worker process's memory stays flat over a long-lived APNs connection.

The channel runs in a process of its own (``harness.sendloop``), the simulator in this
one, so only the sender's memory is measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from simulators.tls import ca_path
from tests.integration.conftest import APNS_KEY_ID, APNS_TEAM, APNS_TOPIC, KEYS


@pytest.mark.timeout(600)
def test_memory_after_100k_sends_is_within_10_percent_of_after_10k(apns: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "apns.p8"
        key.write_text(KEYS["apns"])
        proc = subprocess.run(
            [sys.executable, "-m", "harness.sendloop", "--endpoint", apns.base_url, "--key-file", str(key),
             "--key-id", APNS_KEY_ID, "--team-id", APNS_TEAM, "--topic", APNS_TOPIC, "--ca-bundle", ca_path(),
             "--count", "100000", "--checkpoints", "10000,100000"],
            capture_output=True, text=True, timeout=550,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    at_10k, at_100k = (json.loads(line) for line in proc.stdout.splitlines())
    assert at_100k["outcomes"] == {"Delivered": 100_000}
    assert len(apns.delivered()) == 100_000 and apns.connections_opened >= 1
    growth = at_100k["rss_mb"] / at_10k["rss_mb"] - 1
    print(f"rss after 10k sends {at_10k['rss_mb']} MB, after 100k {at_100k['rss_mb']} MB ({growth:+.1%})")
    assert growth < 0.10, (at_10k, at_100k)
