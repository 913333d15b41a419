"""`notifier bench --json` at toy sizes: the command runs from a clean environment, starts
the Procfile's pools, and its JSON object carries every figure the README quotes. The
figures themselves are measurements, not asserted; what is asserted is that every
broadcast, ceiling and baseline was delivered in full (the bench's ``ok``)."""

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import ENV
from workers.priority import autogroup_enabled


@pytest.mark.timeout(300)
def test_bench_json_reports_every_figure_and_delivers_every_device() -> None:
    env = {**os.environ, "DATABASE_URL": ENV["DATABASE_URL"], "REDIS_URL": ENV["REDIS_URL"]}
    for name in ("NOTIFIER_APPS", "NOTIFIER_CA_BUNDLE", "NOTIFIER_WEBPUSH_ORIGINS"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "notifier.cli", "bench", "--json", "--devices", "60",
                           "--large", "150", "--naive", "10", "--samples", "3"],
                          capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["problems"] == []
    assert set(out["channels"]) == {"apns", "fcm", "webpush", "mixed"}
    for name, row in out["channels"].items():
        assert row["devices"] == 60, name
        assert row["per_s"] > 0 and row["ceiling_per_s"] > 0, name
        assert (row["naive_per_s"] is None) == (name == "mixed"), name
    assert out["large"]["devices"] == 150
    for name, row in {**out["channels"], "large": out["large"]}.items():
        # each ceiling: half its devices sent before the broadcast, half after, rated over both
        before, after = row["ceiling_before_after"]
        assert 0 < min(before, after) - 0.1 <= row["ceiling_per_s"] <= max(before, after) + 0.1, name
        assert row["ceiling_failed"] == 0, name
    assert len(out["large"]["per_s_by_tenth"]) == 10 and all(r > 0 for r in out["large"]["per_s_by_tenth"])
    assert out["rss_mb"]["1m"] >= out["rss_mb"]["100k"] > 0
    for when in ("idle", "during_broadcast"):
        lat = out["latency_ms"][when]
        assert lat["n"] >= 1 and 0 < lat["p50"] <= lat["p99"], when
    assert out["latency_ms"]["idle"]["n"] == 3
    # started from a session it shares (this one's), it ran again in one of its own, where
    # its simulators yield the CPU as the broadcast pools do (harness.bench)
    assert out["simulators"]["cpu"].startswith("nice 10" if autogroup_enabled() else "no autogroup"), out["simulators"]
