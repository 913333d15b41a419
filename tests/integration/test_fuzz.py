"""Bad input at the boundary, generated: every call gets a clear InvalidNotification or
succeeds, and nothing is stored or enqueued half-way (checked in PostgreSQL and Redis)."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notifier import InvalidNotification, register_device
from notifier.cli import main as cli
from tests.integration.conftest import ENV
from workers import app as celery_app
from workers import notify
from workers.queues import TRANSACTIONAL

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
# any unicode, control characters and unpaired surrogates included
any_text = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]), max_size=40)
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
# the simulator's origin, listed in NOTIFIER_WEBPUSH_ORIGINS: endpoints there may be stored
PUSH = ENV["NOTIFIER_WEBPUSH_ORIGINS"]
b64 = st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
subscriptions = st.fixed_dictionaries({
    "endpoint": st.one_of(st.text(max_size=40), st.just(PUSH + "/x"),
                          st.text(max_size=30).map(lambda t: PUSH + "/" + t)),
    "keys": st.one_of(anything, st.fixed_dictionaries({"p256dh": st.one_of(b64, st.text()), "auth": b64})),
})
tokens = st.one_of(anything, subscriptions, st.text(alphabet="0123456789abcdefABCDEF\x00 ", max_size=130),
                   st.text(alphabet="abcXYZ0189_:-.\x00é", min_size=15, max_size=60))


def device_count(store: Any) -> int:
    with store.pool.connection() as conn:
        return int(conn.execute("SELECT count(*) FROM devices").fetchone()[0])


def _real_keys() -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    raw = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"p256dh": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            "auth": base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")}


REAL_KEYS = _real_keys()
valid_key_subscriptions = st.text(max_size=40).map(
    lambda t: {"endpoint": PUSH + "/" + t, "keys": REAL_KEYS})


@FUZZ
@given(app=st.one_of(st.just("testapp"), st.text(max_size=70)), user=st.one_of(st.text(max_size=300), anything),
       platform=st.one_of(st.sampled_from(["apns", "fcm", "webpush"]), anything),
       token=st.one_of(tokens, valid_key_subscriptions))
@example(app="testapp", user="u", platform="webpush", token={"endpoint": PUSH + "/a\x00b",
                                                             "keys": REAL_KEYS})
def test_register_device_refuses_cleanly_or_stores_once(store: Any, app: Any, user: Any, platform: Any,
                                                        token: Any) -> None:
    before = device_count(store)
    try:
        device_id = register_device(app, user, platform, token)
    except InvalidNotification as exc:
        assert str(exc)
        assert device_count(store) == before
        return
    assert isinstance(device_id, int) and device_count(store) in (before, before + 1)


@pytest.fixture(scope="module")
def quiet_broker() -> Any:
    """A Redis db no worker consumes, so every enqueue can be counted."""
    url = ENV["REDIS_URL"].rsplit("/", 1)[0] + "/0"
    for db in range(1, 16):
        candidate = url.rsplit("/", 1)[0] + f"/{db}"
        client = redis.Redis.from_url(candidate)
        if client.dbsize() == 0 and candidate != ENV["REDIS_URL"]:
            yield candidate, client
            client.flushdb()
            client.close()
            return
        client.close()
    pytest.skip("no empty Redis db for the fuzz producer")  # pragma: no cover


fields = st.dictionaries(
    st.one_of(st.sampled_from(["title", "body", "data", "badge", "sound", "silent", "ttl", "collapse_key",
                               "priority", "thread_id", "mutable_content", "title_loc_key", "title_loc_args",
                               "body_loc_key", "body_loc_args", "android_channel_id", "idempotency_key",
                               "topic", "fcm_topic", "fcm_condition"]), st.text(max_size=12)),
    st.one_of(anything, any_text, st.text(min_size=3000, max_size=5000)),
    max_size=6,
)


@FUZZ
@given(users=st.one_of(any_text, st.lists(any_text, max_size=5), anything), fields=fields)
@example(users=[f"u{i}" for i in range(100_001)], fields={"title": "huge audience"})
@example(users=["u"], fields={"title": "t", "data": {"x": "é" * 3000}})
def test_notify_refuses_cleanly_or_enqueues_once(quiet_broker: Any, users: Any, fields: dict[str, Any]) -> None:
    url, client = quiet_broker

    def enqueued() -> int:  # a few users take the transactional lane, more the notify queue
        return client.llen("notify") + client.llen(TRANSACTIONAL)

    before = enqueued()
    with celery_app.connection_for_write(url) as conn:
        try:
            result = notify.apply_async(("testapp", users), dict(fields), producer=conn.Producer())
        except InvalidNotification as exc:
            assert str(exc)
            assert enqueued() == before
            return
    assert uuid.UUID(result.id) and enqueued() == before + 1


@settings(max_examples=60, deadline=None)
@given(arg=st.text(min_size=1, max_size=80).filter(lambda s: not s.startswith("-")))
def test_cli_status_answers_with_an_error_not_a_traceback(arg: str) -> None:
    result = CliRunner().invoke(cli, ["status", arg])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith("Error:")


def test_cli_status_of_an_unknown_uuid() -> None:
    result = CliRunner().invoke(cli, ["status", str(uuid.uuid4())])
    assert result.exit_code == 1 and "no notification" in result.output
