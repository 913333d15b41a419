"""Topic management for the FCM simulator (a part of :class:`simulators.fcm.FcmSimulator`).

Two APIs keep one subscription table:

- FCM v1 per-token API, used by firebase-admin 7.x ``subscribe_to_topic`` /
  ``unsubscribe_from_topic``: ``POST /v1/projects/{p}/registrations/{token}/topicSubscriptions
  ?topic_name={topic}`` (body ``{}``) and ``DELETE .../topicSubscriptions/{topic}
  ?allow_missing=true``; errors are google.rpc.Status bodies with FcmError details.
- Legacy Instance ID batch API (https://developers.google.com/instance-id/reference/server),
  used by ``subscribe_to_topic_legacy``: ``POST /iid/v1:batchAdd`` / ``:batchRemove`` with
  ``{"to": "/topics/x", "registration_tokens": [...]}``, headers ``access_token_auth: true``
  and a bearer token; answer ``{"results": [{}, {"error": "NOT_FOUND"}, ...]}``.

Tokens scripted "unregistered" or "invalid_token" are refused (the script is not consumed).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from simulators._fcm_errors import ERRORS, google_error, json_response, unauthenticated
from simulators._fcm_validate import TOPIC_RE, topic_name
from simulators._fcm_wire import WireRequest, WireResponse


@dataclass(frozen=True)
class TopicRequest:
    """One topic-management request: ``op`` "subscribe"/"unsubscribe", ``api`` "v1"/"iid"."""

    op: str
    api: str
    topic: str
    tokens: tuple[str, ...]
    status: int
    received_at: float


class _Account(Protocol):
    def valid(self, authorization: str | None) -> bool: ...


class TopicApi:
    """The subscription table, its request records and the two topic-management APIs.

    ``cond`` is the simulator's lock (its records and these share it), ``scripted`` maps a
    token to its scripted behaviour without consuming it, ``notify`` wakes ``wait_for``.
    """

    def __init__(self, project_id: str, account: _Account, cond: threading.Condition,
                 scripted: Callable[[str], str | None], notify: Callable[[], None]) -> None:
        self.project_id = project_id
        self._account = account
        self._cond = cond
        self._scripted = scripted
        self._notify = notify
        self._topics: dict[str, set[str]] = {}
        self._requests: list[TopicRequest] = []

    @property
    def requests(self) -> list[TopicRequest]:
        with self._cond:
            return list(self._requests)

    def members(self, topic: str) -> set[str]:
        """Tokens currently subscribed to ``topic`` (with or without "/topics/")."""
        with self._cond:
            return set(self._topics.get(topic_name(topic), ()))

    def clear(self) -> None:
        """Forget every subscription and request."""
        with self._cond:
            self._topics.clear()
            self._requests.clear()

    def _membership(self, op: str, topic: str, token: str) -> None:
        with self._cond:
            members = self._topics.setdefault(topic, set())
            if op == "subscribe":
                members.add(token)
            else:
                members.discard(token)

    def _topic_record(
        self, op: str, api: str, topic: str, tokens: Sequence[str], status: int
    ) -> None:
        with self._cond:
            record = TopicRequest(op, api, topic, tuple(tokens), status, time.time())
            self._requests.append(record)
        self._notify()

    def _refused(self, token: str) -> str | None:
        behaviour = self._scripted(token)
        if behaviour in ("unregistered", "invalid_token"):
            return behaviour
        return None

    def subscription(
        self, req: WireRequest, project: str, token: str, topic: str | None
    ) -> WireResponse:
        op = "subscribe" if req.method == "POST" else "unsubscribe"
        query = urllib.parse.parse_qs(req.query)
        if op == "subscribe":
            topic = query.get("topic_name", [""])[0]
        topic = topic_name(topic or "")

        def answer(response: WireResponse) -> WireResponse:
            self._topic_record(op, "v1", topic, [token], response.status)
            return response

        if req.method not in ("POST", "DELETE") or (op == "unsubscribe" and not topic):
            return answer(google_error(404, "NOT_FOUND", "Method or resource not found."))
        if not self._account.valid(req.headers.get("authorization")):
            return answer(unauthenticated())
        if project != self.project_id:
            return answer(google_error(403, "PERMISSION_DENIED", "Permission denied on resource."))
        if not TOPIC_RE.match(topic):
            return answer(google_error(400, "INVALID_ARGUMENT", "Invalid topic name.",
                                       "INVALID_ARGUMENT", field="topic_name"))
        refused = self._refused(token)
        if refused:
            status, grpc, code, text = ERRORS[refused]
            return answer(google_error(status, grpc, text, code))
        if op == "unsubscribe":
            with self._cond:
                member = token in self._topics.get(topic, ())
            if not member and query.get("allow_missing", [""])[0] != "true":
                return answer(google_error(404, "NOT_FOUND", "Topic subscription not found."))
        self._membership(op, topic, token)
        name = f"projects/{project}/registrations/{token}/topicSubscriptions/{topic}"
        return answer(json_response(200, {"name": name} if op == "subscribe" else {}))

    def iid(self, req: WireRequest, op: str) -> WireResponse:
        try:
            body = json.loads(req.body)
            to, tokens = body["to"], body["registration_tokens"]
            if not (isinstance(to, str) and to.startswith("/topics/")):
                raise ValueError("to")
            if not (isinstance(tokens, list) and 0 < len(tokens) <= 1000):
                raise ValueError("registration_tokens")
            if not all(isinstance(t, str) and t for t in tokens):
                raise ValueError("registration_tokens")
        except (ValueError, KeyError, TypeError):
            self._topic_record(op, "iid", "", [], 400)
            return json_response(400, {"error": "InvalidParameters"})
        topic = topic_name(to)
        if req.headers.get("access_token_auth") != "true" or not self._account.valid(
            req.headers.get("authorization")
        ):
            self._topic_record(op, "iid", topic, tokens, 401)
            return json_response(401, {"error": "Unauthorized"})
        if not TOPIC_RE.match(topic):
            self._topic_record(op, "iid", topic, tokens, 400)
            return json_response(400, {"error": "InvalidParameters"})
        results: list[dict[str, str]] = []
        for token in tokens:
            refused = self._refused(token)
            if refused:
                code = "NOT_FOUND" if refused == "unregistered" else "INVALID_ARGUMENT"
                results.append({"error": code})
            else:
                self._membership(op, topic, token)
                results.append({})
        self._topic_record(op, "iid", topic, tokens, 200)
        return json_response(200, {"results": results})
