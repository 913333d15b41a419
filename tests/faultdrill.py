"""Fault injection for the fault suite, loaded into a worker with ``-I tests.faultdrill``.

The broker refuses every publish of the first ``resume_owed`` run (in each pool process)
that dispatches channel tasks, as a broker that drops or refuses messages would: what
those tasks carried must not be lost. Test-only: nothing in ``notifier`` or ``workers``
knows of it.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.messaging
from celery import current_task
from kombu.exceptions import OperationalError

log = logging.getLogger("faultdrill")
_publish = kombu.messaging.Producer.publish
_state: dict[str, Any] = {"victim": None, "done": False}


def _refusing_publish(self: kombu.messaging.Producer, body: Any, *args: Any, **kwargs: Any) -> Any:
    task = current_task
    name = (kwargs.get("headers") or {}).get("task", "")
    if task is not None and task.name == "notifier.resume_owed" and name.startswith("notifier.send_"):
        rid = task.request.id
        if not _state["done"] and _state["victim"] in (None, rid):
            _state["victim"] = rid
            log.warning("publish lost (fault drill): %s", name)
            raise OperationalError("publish lost (fault drill)")
        if _state["victim"] is not None and rid != _state["victim"]:
            _state["done"] = True
    return _publish(self, body, *args, **kwargs)


kombu.messaging.Producer.publish = _refusing_publish  # type: ignore[method-assign]
