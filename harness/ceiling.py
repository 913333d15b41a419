"""The ceiling: one asyncio process sending with the same channel code and client
libraries as the workers (aioapns, firebase-admin, pywebpush), with no Celery, Redis or
PostgreSQL in the way. ``notifier bench`` runs it beside the pipeline, against the same
simulators and the same devices.

    python -m harness.ceiling --app bench --platform apns --count 100000

The devices are read from ``DATABASE_URL`` before the clock starts. Prints one JSON
object: {"platform", "sent", "started", "finished" (wall clock, time.time()),
"seconds", "per_s", "cpu_s" (this process's CPU time sending), "outcomes": {type: n}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import psycopg

from notifier.checks import build_notification
from notifier.config import Settings
from notifier.model import Device, Platform

CHUNK = 10_000  # devices handed to one channel.send: large, so the pipeline rarely drains


def devices(database_url: str, app: str, platform: Platform, count: int) -> list[Device]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id, token, p256dh, auth FROM devices WHERE app = %s AND platform = %s"
                            " ORDER BY id LIMIT %s", (app, platform.value, count)).fetchall()
    return [Device(r[0], app, platform, r[1], r[2], r[3]) for r in rows]


async def run(app: str, platform: Platform, count: int) -> dict[str, object]:
    from workers.runtime import CHANNELS  # the channel classes the workers use

    settings = Settings.current()
    targets = devices(settings.database_url, app, platform, count)
    channel = CHANNELS[platform].from_config(settings.app(app), settings)
    note = build_notification(title="bench", body="Your order shipped. It arrives Thursday.",
                              data={"order": "A-1042"})
    outcomes: Counter[str] = Counter()
    started, t0, cpu = time.time(), time.perf_counter(), time.process_time()
    for i in range(0, len(targets), CHUNK):
        for outcome in await channel.send(note, targets[i:i + CHUNK]):
            outcomes[type(outcome).__name__] += 1
    seconds = time.perf_counter() - t0
    finished, cpu = time.time(), time.process_time() - cpu
    await channel.close()
    return {"platform": platform.value, "sent": len(targets), "started": started, "finished": finished,
            "seconds": round(seconds, 3), "per_s": round(len(targets) / seconds, 1) if seconds else 0.0,
            "outcomes": dict(outcomes), "cpu_s": round(cpu, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", required=True)
    p.add_argument("--platform", required=True, choices=[x.value for x in Platform])
    p.add_argument("--count", type=int, required=True)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args.app, Platform(args.platform), args.count))), flush=True)


if __name__ == "__main__":
    main()
