"""Everything owed has an owner (issue 15): lapsed claims, lost tasks, stalled fan-outs and
retries are found and dispatched by the resumer; outcomes are recorded as a batch runs; a
writer that lost its claim writes nothing; anything a push service answers is an outcome;
the TTL is a deadline; an idempotency key means one notification.

Each scenario is built from the store's own calls (a task that "died" is a claim nobody
sends for), then left to the real worker and its beat, and counted by the simulator.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from notifier import InvalidNotification, register_device
from notifier.api import prepare_notify
from notifier.feedback import MAX_REASON, Result
from notifier.model import Platform
from notifier.outcomes import Delivered
from tests.integration.conftest import wait_until
from workers import notify

APP = "testapp"
HOUR = 3600.0
OWNER, DIES = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"  # fan-out owners


def rows(store: Any, nid: str) -> dict[int, tuple[str, str | None, int]]:
    with store.pool.connection() as conn:
        found = conn.execute("SELECT device_id, status, reason, attempts FROM deliveries WHERE notification_id = %s",
                             (nid,)).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in found}


def fanned_out_by_hand(store: Any, users: list[str], *, grace: float) -> str:
    """A notification stored and fanned out with no task dispatched for its devices: as if
    every task carrying them was lost. Nothing is due before ``grace`` seconds."""
    request = prepare_notify(APP, users, title="owed")
    store.create_notification(request, grace=HOUR)
    assert store.claim_fanout(request.id, OWNER, timedelta(hours=1)) == 0
    store.add_users(request.id, APP, request.audience.ids, grace)  # as fan_out does first
    store.finish_fanout(request.id, OWNER)
    return request.id


def test_rows_whose_task_was_lost_are_dispatched_by_the_resumer(webpush, worker, settled, store) -> None:
    subs = [webpush.subscribe() for _ in range(3)]
    for i, sub in enumerate(subs):
        register_device(APP, f"lost{i}", "webpush", sub)
    nid = fanned_out_by_hand(store, [f"lost{i}" for i in range(3)], grace=1)
    st = settled(nid, timeout=30)
    assert st.counts == {"delivered": 3} and [webpush.delivered_count(s) for s in subs] == [1, 1, 1]


def test_a_lapsed_claim_is_resumed_and_its_old_holder_writes_nothing(webpush, worker, settled, store) -> None:
    sub = webpush.subscribe()
    device_id = register_device(APP, "claimed", "webpush", sub)
    nid = fanned_out_by_hand(store, ["claimed"], grace=HOUR)
    # a batch claims the device for one second, then its worker dies before sending
    dead = store.claim(nid, Platform.WEBPUSH, 0, 10**9, limit=50, max_attempts=4, lease=timedelta(seconds=1))
    assert dead is not None and [d.id for d in dead.devices] == [device_id]
    st = settled(nid, timeout=30)
    assert st.counts == {"delivered": 1} and webpush.delivered_count(sub) == 1
    # the dead batch's late write changes nothing: its claim was taken over
    assert store.record(nid, dead.claim_id, [Result(dead.devices[0], Delivered(), "delivered")]) == []
    assert rows(store, nid)[device_id][2] == 2  # the lapsed attempt counts against the limit


def test_a_stalled_fan_out_is_resumed(webpush, worker, settled, store) -> None:
    subs = [webpush.subscribe() for _ in range(120)]
    for i, sub in enumerate(subs):
        register_device(APP, f"f{i}", "webpush", sub)
    request = prepare_notify(APP, [f"f{i}" for i in range(120)], title="resumed")
    store.create_notification(request, grace=HOUR)
    store.claim_fanout(request.id, DIES, timedelta(seconds=1))
    store.add_users(request.id, APP, request.audience.ids[:50], HOUR)  # part of the list, then the fan-out died
    st = settled(request.id, timeout=30)
    assert st.counts == {"delivered": 120}
    assert sorted(webpush.delivered_count(s) for s in subs) == [1] * 120


def test_outcomes_are_recorded_while_the_batch_runs(webpush, worker, settled, store) -> None:
    subs = [webpush.subscribe() for _ in range(6)]
    webpush.script(subs[0], "slow", delay=2.5)  # within the 3 s send timeout
    for i, sub in enumerate(subs):
        register_device(APP, f"r{i}", "webpush", sub)
    nid = notify.delay(APP, [f"r{i}" for i in range(6)], title="as it goes").id

    def five_recorded_one_in_flight() -> bool:
        statuses = [s for s, _, _ in rows(store, nid).values()]
        return statuses.count("delivered") == 5 and statuses.count("sending") == 1

    wait_until(five_recorded_one_in_flight, timeout=2.3, what="five outcomes recorded before the slow answer")
    assert settled(nid).counts == {"delivered": 6}


def test_a_retry_waits_in_postgresql_and_sends_only_the_ttl_that_remains(webpush, worker, settled, store) -> None:
    sub = webpush.subscribe()
    webpush.script(sub, "error", status=503, retry_after=3, times=1)
    device_id = register_device(APP, "ttl", "webpush", sub)
    nid = notify.delay(APP, "ttl", title="soon stale", ttl=600).id
    wait_until(lambda: rows(store, nid).get(device_id, ("",))[0] == "retrying", what="the retry to be parked")
    st = settled(nid, timeout=30)
    assert st.counts == {"delivered": 1}
    first, second = webpush.records
    assert (first.status, second.status) == (503, 201)
    waited = second.received_at - first.received_at
    assert waited >= 3.0  # Retry-After honoured
    assert first.ttl in (599, 600)  # counted from the notify() call
    assert 600 - waited - 2 <= second.ttl <= 600 - waited + 1


@pytest.mark.parametrize("body, status, final", [("nul", 410, "dead"), ("invalid_utf8", 404, "dead"),
                                                 ("huge", 503, "delivered")])
def test_a_hostile_answer_is_an_outcome_and_resends_nothing(webpush, worker, settled, store, body: str,
                                                            status: int, final: str) -> None:
    """Issue 15's reproduction: a NUL in an error body made the store raise, the task retried
    without limit and every other device of the batch got a copy per lease period."""
    hostile = webpush.subscribe()
    others = [webpush.subscribe() for _ in range(10)]
    webpush.script(hostile, "hostile", body=body, status=status, times=1)
    hostile_id = register_device(APP, "hostile", "webpush", hostile)
    for i, sub in enumerate(others):
        register_device(APP, f"o{i}", "webpush", sub)
    st = settled(notify.delay(APP, ["hostile", *(f"o{i}" for i in range(10))], title="t").id, timeout=30)
    assert st.counts.get("delivered", 0) == 10 + (final == "delivered")
    assert [webpush.delivered_count(s) for s in others] == [1] * 10  # no copies
    status_, reason, _ = rows(store, st.notification_id)[hostile_id]
    assert status_ == final
    if final == "dead":
        assert reason is not None and reason.startswith(str(status)) and "\x00" not in reason
        assert len(reason) <= MAX_REASON


def test_an_idempotency_key_means_one_notification(webpush, worker, settled, store) -> None:
    sub = webpush.subscribe()
    register_device(APP, "k", "webpush", sub)
    register_device(APP, "other", "webpush", webpush.subscribe())
    first = notify.delay(APP, "k", title="order 7 shipped", idempotency_key="order-7")
    assert notify.delay(APP, "k", title="order 7 shipped", idempotency_key="order-7").id == first.id
    with pytest.raises(InvalidNotification, match="another audience or content"):
        notify.delay(APP, "k", title="order 8 shipped", idempotency_key="order-7")
    with pytest.raises(InvalidNotification, match="another audience or content"):
        notify.delay(APP, ["k", "other"], title="order 7 shipped", idempotency_key="order-7")
    st = settled(first.id)
    assert st.counts == {"delivered": 1} and webpush.delivered_count(sub) == 1
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM notifications").fetchone()[0] == 1


def test_the_resumer_queries_are_served_by_their_partial_indexes(store) -> None:
    """What the resumer reads every few seconds must not scan the table: finished rows are
    outside the partial indexes, so the query costs what is owed, at any table size."""
    queries = {
        "deliveries_owed_due": "SELECT notification_id, device_id FROM deliveries WHERE status IN"
                               " ('pending', 'sending', 'retrying', 'scheduled') AND due_at <= now() ORDER BY due_at LIMIT 100",
        "notifications_fanout_open": "SELECT id FROM notifications WHERE fanout_done_at IS NULL"
                                     " AND fanout_until < now() ORDER BY fanout_until LIMIT 100",
    }
    with store.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # an empty table would be scanned anyway
        for index, query in queries.items():
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query).fetchall())
            assert f"using {index}" in plan or f"on {index}" in plan, plan  # an index or bitmap index scan
