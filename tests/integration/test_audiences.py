"""Audiences at scale: a user list handed to PostgreSQL once per notification, and a
whole-app broadcast paged straight over the devices table."""

from __future__ import annotations

import os

import pytest

from notifier import InvalidNotification, register_device
from tests.integration.test_hygiene import fcm_token
from workers import notify

APP = "testapp"


def test_everyone_reaches_every_device_of_the_app_and_no_other(webpush, apns, fcm, worker, settled, store) -> None:
    subs = [webpush.subscribe() for _ in range(3)]
    ios = [os.urandom(32).hex() for _ in range(60)]  # batch size 50: two pages of iOS alone
    android = [fcm_token() for _ in range(4)]
    for i, s in enumerate(subs):
        register_device(APP, f"w{i}", "webpush", s)
    for i, t in enumerate(ios):
        register_device(APP, f"i{i}", "apns", t)
    for i, t in enumerate(android):
        register_device(APP, f"a{i}", "fcm", t)
    with store.pool.connection() as conn:  # another app's device, never part of testapp's "everyone"
        conn.execute("INSERT INTO devices (app, user_id, platform, token) VALUES ('otherapp', 'x', 'apns', %s)",
                     (os.urandom(32).hex(),))
    st = settled(notify.delay(APP, everyone=True, title="all").id)
    assert st.counts == {"delivered": 67}
    assert [webpush.delivered_count(s) for s in subs] == [1] * 3
    assert [apns.delivered_count(t) for t in ios] == [1] * 60
    assert [fcm.delivered_count(t) for t in android] == [1] * 4
    assert len(apns.records) == 60  # nothing went to the other app's device

    only_ios = settled(notify.delay(APP, everyone="apns", title="iOS").id)
    assert only_ios.counts == {"delivered": 60}
    assert [apns.delivered_count(t) for t in ios] == [2] * 60 and [fcm.delivered_count(t) for t in android] == [1] * 4


@pytest.mark.parametrize("kwargs, message", [
    ({"everyone": "blackberry"}, "platform"),
    ({"everyone": 3}, "everyone is True"),
    ({"everyone": True, "topic": "news"}, "exactly one audience"),
])
def test_a_bad_everyone_is_refused_at_the_call(kwargs, message) -> None:
    with pytest.raises(InvalidNotification, match=message):
        notify.delay(APP, title="t", **kwargs)


def test_a_user_list_is_read_once_and_paged_by_delivery_rows(store) -> None:
    """The fan-out looks each user up once (``devices_app_user_id``) and then pages over the
    notification's own delivery rows (``deliveries_pkey``): no page is handed the list."""
    queries = {
        "devices_app_user_id": "SELECT d.id FROM devices d WHERE d.app = 'a' AND d.user_id = ANY('{u1,u2}')",
        "deliveries_pkey": "SELECT device_id, platform FROM deliveries WHERE notification_id ="
                           " '00000000-0000-4000-8000-000000000000' AND device_id > 0 ORDER BY device_id LIMIT 500",
        "devices_app_id": "SELECT id FROM devices WHERE app = 'a' AND id > 0 ORDER BY id LIMIT 500",
    }
    with store.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        for index, query in queries.items():
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query).fetchall())
            assert f"using {index}" in plan or f"on {index}" in plan, plan
