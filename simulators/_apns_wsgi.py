"""The WSGI application behind :class:`simulators.apns_served.ServedApnsSimulator`.

Granian serves it: hyper speaks HTTP/2 and rustls TLS, and this module checks each
notification as :class:`simulators.apns.ApnsSimulator` does (``_apns_wire.validate``:
method, path, provider token, headers, device token, payload), answering 200 with an
``apns-id`` or Apple's status and JSON reason. It keeps counts, not records.

Configured from the environment of the process Granian starts (``SIM_APNS_TEAM``;
``SIM_APNS_KEYS``, a JSON object of key id -> public key PEM; ``SIM_APNS_TOKEN_MAX_AGE``;
``SIM_APNS_NONCE``, echoed by the stats). ``/__sim/stats`` (GET) and ``/__sim/reset``
(POST) are the simulator's own, over HTTP/1.1 or HTTP/2.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from simulators._apns_wire import TokenVerifier, validate

ADMIN = "/__sim/"

_auth = TokenVerifier(os.environ.get("SIM_APNS_TEAM", ""), json.loads(os.environ.get("SIM_APNS_KEYS", "{}")),
                      float(os.environ.get("SIM_APNS_TOKEN_MAX_AGE", "3600")))
_lock = threading.Lock()
_accepted: set[bytes] = set()  # tokens answered 200 (32 bytes each, not 64 characters)
_counts: Counter[str] = Counter()  # "delivered", "repeated" (a token answered 200 again), each rejection reason
_last_delivered_at = [0.0]  # epoch seconds of the latest 200

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path.startswith(ADMIN):
        return _admin(environ["REQUEST_METHOD"], path[len(ADMIN):], start_response)
    if environ.get("QUERY_STRING"):  # ApnsSimulator reads it as part of the device token
        path = f"{path}?{environ['QUERY_STRING']}"
    body = environ["wsgi.input"].read()
    headers = {key[5:].lower().replace("_", "-"): value for key, value in environ.items() if key.startswith("HTTP_")}
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
    if environ.get("SERVER_PROTOCOL") != "HTTP/2":  # APNs speaks HTTP/2 only
        return _respond(start_response, 505, apns_id, "HTTPVersionNotSupported")
    # duplicated: False. WSGI joins repeated headers into one, so DuplicateHeaders goes
    # unseen here; ApnsSimulator checks it.
    token, rejection, _claims, _payload = validate(environ["REQUEST_METHOD"], path, headers, False, body, _auth,
                                                   time.time())
    with _lock:
        if rejection is not None:
            _counts[rejection.reason] += 1
        else:
            key = bytes.fromhex(token.lower())  # validate checked it: 64 hex digits
            if key in _accepted:
                _counts["repeated"] += 1
            else:
                _accepted.add(key)
                _counts["delivered"] += 1
            _last_delivered_at[0] = time.time()
    if rejection is not None:
        return _respond(start_response, rejection.status, apns_id, rejection.reason)
    start_response("200 OK", [("apns-id", apns_id)])
    return []


def _respond(start_response: StartResponse, status: int, apns_id: str, reason: str) -> list[bytes]:
    body = json.dumps({"reason": reason}, separators=(",", ":")).encode()
    start_response(f"{status} {reason}", [("apns-id", apns_id), ("content-type", "application/json"),
                                          ("content-length", str(len(body)))])
    return [body]


def _admin(method: str, what: str, start_response: StartResponse) -> list[bytes]:
    with _lock:
        if (method, what) == ("POST", "reset"):
            _accepted.clear()
            _counts.clear()
            _last_delivered_at[0] = 0.0
        elif (method, what) != ("GET", "stats"):
            start_response("404 Not Found", [("content-length", "0")])
            return []
        body = json.dumps({**_counts, "nonce": os.environ.get("SIM_APNS_NONCE", ""),
                           "last_delivered_at": _last_delivered_at[0]}).encode()
    start_response("200 OK", [("content-type", "application/json"), ("content-length", str(len(body)))])
    return [body]
