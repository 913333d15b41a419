"""Fault injection, loaded into a worker with ``-I tests.lostcommit``: the first
transactional-lane ``begin_fanout`` in each process returns as committed, and then its
notification is gone, as when PostgreSQL crashes before its asynchronous commit reached
the disk (``durable=False``). Test-only: nothing in ``notifier`` or ``workers`` knows of it.
"""

from __future__ import annotations

import logging
from typing import Any

from notifier.model import NotifyRequest
from notifier.store import Store

log = logging.getLogger("lostcommit")
_begin = Store.begin_fanout
_lost: set[str] = set()


def _begin_then_lose(self: Store, request: NotifyRequest, *args: Any, **kwargs: Any) -> int | None:
    cursor = _begin(self, request, *args, **kwargs)
    if kwargs.get("durable") is False and not _lost:
        _lost.add(request.id)
        with self.pool.connection() as conn:  # its delivery rows go with it (ON DELETE CASCADE)
            conn.execute("DELETE FROM notifications WHERE id = %s", (request.id,))
        log.warning("commit lost (fault drill): notification %s", request.id)
    return cursor


Store.begin_fanout = _begin_then_lose  # type: ignore[method-assign]
