"""A channel in a process of its own, sending N notifications in batches and printing its
resident memory at checkpoints: the memory regression test and the bench run it with
``python -m harness.sendloop``, so the simulator's own memory is never counted.

Prints one JSON object per checkpoint: {"sent": N, "rss_mb": float, "seconds": float,
"outcomes": {"Delivered": n, ...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from collections import Counter
from pathlib import Path

from notifier.apns import ApnsChannel
from notifier.config import ApnsApp
from notifier.checks import build_notification
from notifier.model import Device, Platform


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def run(args: argparse.Namespace) -> None:
    cfg = ApnsApp(topic=args.topic, key_file=Path(args.key_file), key_id=args.key_id, team_id=args.team_id,
                  endpoint=args.endpoint)
    channel = ApnsChannel("bench", cfg, key_pem=Path(args.key_file).read_text(), timeout=10,
                          max_in_flight=args.in_flight, ca_bundle=args.ca_bundle, connections=1)
    note = build_notification(title="bench", body="x" * 40)
    checkpoints = {int(c) for c in args.checkpoints.split(",")}
    outcomes: Counter[str] = Counter()
    sent, started = 0, time.monotonic()
    while sent < args.count:
        n = min(args.batch, args.count - sent)
        devices = [Device(sent + i, "bench", Platform.APNS, os.urandom(32).hex()) for i in range(n)]
        for o in await channel.send(note, devices):
            outcomes[type(o).__name__] += 1
        sent += n
        if sent in checkpoints:
            gc.collect()
            print(json.dumps({"sent": sent, "rss_mb": round(rss_mb(), 2), "seconds": round(time.monotonic() - started, 2),
                              "outcomes": dict(outcomes)}), flush=True)
    await channel.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("--key-id", required=True)
    p.add_argument("--team-id", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--ca-bundle")
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--in-flight", type=int, default=100)
    p.add_argument("--checkpoints", default="10000,100000")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
