"""The critical category's fallback task in the tests (``fallback_task`` in the suite's
apps file): a worker given ``-I tests.fallback_target`` records each call in Redis."""

from __future__ import annotations

import json
import os
from typing import Any

import redis

from workers.celery import app

CALLS = "notifier-test:fallback-calls"


@app.task(name="tests.record_fallback")
def record_fallback(**body: Any) -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.rpush(CALLS, json.dumps(body))
    client.close()
