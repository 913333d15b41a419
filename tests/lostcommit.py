"""Fault injection, loaded into a worker with ``-I tests.lostcommit``: the first
transactional-lane commit of one kind in each process returns as committed, and then is
gone, as when PostgreSQL crashes before an asynchronous commit reached the disk
(``durable=False``). Test-only: nothing in ``notifier`` or ``workers`` knows of it.

``LOST_COMMIT`` chooses which: ``begin_fanout`` (the default: the notification is gone)
or ``record`` (a batch's outcomes are gone: its rows stay claimed; to keep the test
short, the claim has lapsed at once, which ``test_guards`` covers in full).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from notifier.feedback import Result
from notifier.model import NotifyRequest
from notifier.store import Store

log = logging.getLogger("lostcommit")
LOSE = os.environ.get("LOST_COMMIT", "begin_fanout")
_begin, _record = Store.begin_fanout, Store.record
_lost: set[str] = set()


def _begin_then_lose(self: Store, request: NotifyRequest, *args: Any, **kwargs: Any) -> int | None:
    cursor = _begin(self, request, *args, **kwargs)
    if LOSE == "begin_fanout" and kwargs.get("durable") is False and not _lost:
        _lost.add(request.id)
        with self.pool.connection() as conn:  # its delivery rows go with it (ON DELETE CASCADE)
            conn.execute("DELETE FROM notifications WHERE id = %s", (request.id,))
        log.warning("commit lost (fault drill): notification %s", request.id)
    return cursor


def _record_lost(self: Store, nid: str, claim_id: str, results: Sequence[Result], **kwargs: Any) -> list[Result]:
    if LOSE != "record" or kwargs.get("durable") is not False or _lost:
        return _record(self, nid, claim_id, results, **kwargs)
    _lost.add(nid)
    with self.pool.connection() as conn:  # nothing written; the claim lapses now
        conn.execute("UPDATE deliveries SET due_at = now() WHERE notification_id = %s AND claim_id = %s",
                     (nid, claim_id))
    log.warning("commit lost (fault drill): the outcomes of notification %s", nid)
    return list(results)  # as the batch saw it: written


Store.begin_fanout = _begin_then_lose  # type: ignore[method-assign]
Store.record = _record_lost  # type: ignore[method-assign]
