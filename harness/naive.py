"""The baseline most tutorials build: one Celery task per device, each loading its device,
sending it synchronously and writing one row back. ``notifier bench`` runs it on the
same Redis, PostgreSQL and simulators as the pipeline (``celery -A harness.naive worker``).

    for device_id in ids: send_one.delay(app, device_id)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
from celery import Celery

from notifier.checks import build_notification
from notifier.config import Settings
from notifier.model import Device, Platform

QUEUE = "naive"
app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True, task_ignore_result=True,
                worker_hijack_root_logger=False)

_state: dict[str, Any] = {}  # per pool process: its connection, event loop and channels


def _process_state() -> dict[str, Any]:
    if _state.get("pid") != os.getpid():
        _state.clear()
        settings = Settings.current()
        _state.update(pid=os.getpid(), settings=settings, loop=asyncio.new_event_loop(), channels={},
                      conn=psycopg.connect(settings.database_url, autocommit=True))
    return _state


@app.task(name="naive.send_one")
def send_one(app_name: str, device_id: int) -> str:
    from workers.runtime import CHANNELS  # the same channel code as the workers

    st = _process_state()
    row = st["conn"].execute("SELECT platform, token, p256dh, auth FROM devices WHERE id = %s",
                             (device_id,)).fetchone()
    platform = Platform(row[0])
    channel = st["channels"].get((app_name, platform))
    if channel is None:
        channel = st["channels"][(app_name, platform)] = CHANNELS[platform].from_config(
            st["settings"].app(app_name), st["settings"])
    note = build_notification(title="bench", body="Your order shipped. It arrives Thursday.",
                              data={"order": "A-1042"})
    [outcome] = st["loop"].run_until_complete(channel.send(note, [Device(device_id, app_name, platform, *row[1:])]))
    st["conn"].execute("UPDATE devices SET last_delivered_at = now() WHERE id = %s", (device_id,))
    return type(outcome).__name__
