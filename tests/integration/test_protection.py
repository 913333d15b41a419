"""Protection that a bad day cannot fool (issue 16): Web Push endpoints point only where
we allow, at registration and at send time."""

from __future__ import annotations

import pytest

from notifier import InvalidNotification, register_device
from notifier.model import CheckedToken, Platform
from workers import notify

APP = "testapp"


@pytest.mark.parametrize("endpoint", ["https://127.0.0.1:6379/x", "https://10.0.0.5/push", "https://[::1]:5432/",
                                      "https://169.254.169.254/latest/meta-data", "https://push.example.com/x"])
def test_a_subscription_pointing_elsewhere_is_refused_at_registration(webpush, store, endpoint: str) -> None:
    sub = {**webpush.subscribe(), "endpoint": endpoint}
    with pytest.raises(InvalidNotification):
        register_device(APP, "u", "webpush", sub)
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 0


def test_a_stored_endpoint_no_longer_allowed_is_never_posted_to(webpush, worker, settled, store) -> None:
    """A subscription stored before the policy (or before its origin was unlisted): the
    simulator, on loopback under another name, must receive nothing; the token is kept."""
    sub = webpush.subscribe()
    elsewhere = sub["endpoint"].replace("127.0.0.1", "localhost")  # same server, an origin nobody listed
    store.register(APP, "old", Platform.WEBPUSH, CheckedToken(elsewhere, sub["keys"]["p256dh"], sub["keys"]["auth"]))
    live = webpush.subscribe()
    register_device(APP, "new", "webpush", live)
    st = settled(notify.delay(APP, ["old", "new"], title="t").id)
    assert st.counts == {"delivered": 1, "failed": 1}
    (failure,) = st.failures
    assert "not a known push service" in (failure.reason or "")
    assert len(webpush.records) == 1 and webpush.delivered_count(live) == 1
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM stale_tokens").fetchone()[0] == 0
