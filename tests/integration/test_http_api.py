"""The HTTP API: bearer tokens per app (hashed at rest), the Python API's checks at the
same boundary, a body limit, and its OpenAPI document as committed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from notifier.cli import main as cli
from notifier.store.access import user_proof
from workers.web import MAX_BODY

APP = "testapp"
OPENAPI = Path(__file__).resolve().parents[2] / "workers" / "openapi.json"


def make_token(scope: str = "send", app: str = APP) -> str:
    out = CliRunner().invoke(cli, ["api-token", "create", app, "--name", f"test-{scope}", "--scope", scope])
    assert out.exit_code == 0, out.output
    return out.output.split()[0]


def make_register_token() -> tuple[str, str]:
    out = CliRunner().invoke(cli, ["api-token", "create", APP, "--name", "test-register", "--scope", "register"])
    assert out.exit_code == 0, out.output
    token, secret = out.output.split()
    return token, secret


class Client:
    """requests against the run's ``notifier serve``, with paths."""

    def __init__(self, base: str) -> None:
        self.base, self.session = base, requests.Session()

    def get(self, path: str, **kw: object) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw: object) -> requests.Response:
        return self.session.post(self.base + path, timeout=30, **kw)


@pytest.fixture
def client(api_server):
    c = Client(api_server)
    yield c
    c.session.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_or_a_bad_one_is_refused_and_a_good_one_sends(client, store, apns, worker, settled) -> None:
    token = make_token()
    body = {"user": "api-user", "platform": "apns", "token": os.urandom(32).hex()}
    for headers in ({}, auth("ntf_" + "x" * 43), auth(token[:-1]), {"Authorization": f"Basic {token}"}):
        answer = client.post("/v1/devices", json=body, headers=headers)
        assert answer.status_code == 401 and "bearer token" in answer.json()["error"], headers
    with store.pool.connection() as conn:  # nothing registered by the refused calls; the token only as a hash
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 0
        hashes = [bytes(r[0]) for r in conn.execute("SELECT hash FROM api_tokens")]
    assert hashlib.sha256(token.encode()).digest() in hashes and all(token.encode() not in h for h in hashes)

    answer = client.post("/v1/devices", json=body, headers=auth(token))
    assert answer.status_code == 201, answer.text
    answer = client.post("/v1/notifications", json={"users": ["api-user"], "title": "hello over HTTP"},
                         headers=auth(token))
    assert answer.status_code == 202, answer.text
    nid = answer.json()["id"]
    settled(nid)
    assert apns.delivered_count(body["token"]) == 1
    answer = client.get(f"/v1/notifications/{nid}", headers=auth(token))
    assert answer.status_code == 200 and answer.json()["counts"] == {"delivered": 1}


def test_the_python_apis_checks_answer_422_and_nothing_is_stored(client, store) -> None:
    token = make_token()
    cases = [
        ("/v1/devices", {"user": "u", "platform": "apns", "token": "not-hex"}, "hex"),
        ("/v1/devices", {"user": "u", "platform": "webpush",
                         "token": {"endpoint": "https://10.0.0.5/push", "keys": {"p256dh": "x", "auth": "y"}}}, ""),
        ("/v1/notifications", {"users": ["u"]}, "title"),
        ("/v1/notifications", {"users": ["u"], "topic": "t", "title": "x"}, "exactly one audience"),
        ("/v1/notifications", {"users": ["u"], "title": "x", "send_at": "25:00"}, "send_at"),
        ("/v1/notifications", {"users": ["u"], "title": "x", "colour": "red"}, ""),  # unknown field
    ]
    for path, body, why in cases:
        answer = client.post(path, json=body, headers=auth(token))
        assert answer.status_code == 422, (body, answer.text)
        assert why in answer.text
    with store.pool.connection() as conn:
        assert conn.execute("SELECT (SELECT count(*) FROM devices) + (SELECT count(*) FROM notifications)"
                            ).fetchone()[0] == 0


def test_a_register_token_only_registers_and_apps_stay_apart(client, store, webpush) -> None:
    (reg, secret), other = make_register_token(), make_token("send", app="wrongkey")
    sub = webpush.subscribe()
    device = {"user": "u", "platform": "webpush", "token": sub}
    for proof in (None, user_proof(secret, "someone-else"), "00" * 32):  # the token alone registers nobody
        answer = client.post("/v1/devices", json={**device, "user_proof": proof}, headers=auth(reg))
        assert answer.status_code == 403 and "user_proof" in answer.text, proof
    answer = client.post("/v1/devices", json={**device, "user_proof": user_proof(secret, "u")}, headers=auth(reg))
    assert answer.status_code == 201, answer.text
    key = client.get("/v1/webpush/vapid-public-key", headers=auth(reg)).json()["public_key"]
    assert len(key) == 87  # 65 bytes, base64url: an uncompressed P-256 point
    answer = client.post("/v1/notifications", json={"users": ["u"], "title": "x"}, headers=auth(reg))
    assert answer.status_code == 403
    send = make_token()
    nid = client.post("/v1/notifications", json={"users": ["u"], "title": "x", "send_at": "08:00"},
                      headers=auth(send)).json()["id"]
    assert client.get(f"/v1/notifications/{nid}", headers=auth(other)).status_code == 404  # another app's
    answer = client.post(f"/v1/notifications/{nid}/cancel", headers=auth(send))
    assert answer.status_code == 200 and answer.json()["id"] == nid
    out = CliRunner().invoke(cli, ["api-token", "revoke", APP, "--name", "test-register"])
    assert out.exit_code == 0
    assert client.post("/v1/devices/unregister", json={"platform": "webpush", "token": sub},
                       headers=auth(reg)).status_code == 401


def test_a_body_over_the_limit_is_refused_before_it_is_read(client) -> None:
    token = make_token()
    big = {"users": ["u"], "title": "x", "data": {"blob": "a" * MAX_BODY}}
    answer = client.post("/v1/notifications", json=big, headers=auth(token))
    assert answer.status_code == 413 and "over" in answer.json()["error"]

    def chunks():  # no Content-Length: counted as it streams in
        yield b'{"users": ["u"], "title": "x", "data": {"blob": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"a" * 1024
        yield b'"}}'

    answer = client.post("/v1/notifications", data=chunks(), headers={**auth(token),
                                                                      "Content-Type": "application/json"})
    assert answer.status_code == 413


def test_the_openapi_document_is_served_and_committed(client) -> None:
    served = client.get("/openapi.json").json()
    assert served == json.loads(OPENAPI.read_text()), "run: notifier serve --openapi > workers/openapi.json"
    assert {"/v1/devices", "/v1/notifications", "/v1/notifications/{notification_id}/cancel"} <= set(served["paths"])
    assert client.get("/").status_code == 200 and "serviceWorker" in client.get("/").text
