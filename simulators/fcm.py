"""FCM simulator: Google's OAuth token endpoint + FCM HTTP v1 + topic management, on
https://127.0.0.1 (HTTP/2 and HTTP/1.1 by ALPN, as firebase-admin's httpx client uses h2).

Endpoints (one server, one port):

- ``POST /token`` - OAuth 2.0 JWT bearer grant (RFC 7523; see ``_fcm_auth``). The service
  account comes from :meth:`FcmSimulator.service_account_info`, whose ``token_uri`` points here.
- ``POST /v1/projects/{p}/messages:send`` - FCM HTTP v1
  (https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send). Needs
  ``Authorization: Bearer <token issued here, unexpired>`` (else 401 UNAUTHENTICATED); the
  body is checked like FCM does (``_fcm_validate``: one target, string data values, data
  <= 4096 bytes) -> 400 INVALID_ARGUMENT naming the field. The recipient is ``token``, ``fid``
  (what firebase-admin 7.7 ``Message(fid=)`` sends), ``topic`` or ``condition``. Errors are
  shaped like Google's:
  ``{"error": {"code", "message", "status", "details": [{"@type": ...FcmError, "errorCode"}]}}``
  (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode).
- Topic management (``_fcm_topics``): the per-token FCM v1 API firebase-admin 7.x
  ``subscribe_to_topic`` uses (``/v1/projects/{p}/registrations/{token}/topicSubscriptions``)
  and the legacy Instance ID ``/iid/v1:batchAdd`` / ``:batchRemove`` (``*_legacy`` functions).

A message to a topic or condition is recorded as one request; no fan-out happens here.

Scripted behaviours, per token or topic name (``script(target, behaviour, times=N, ...)``;
``times`` reverts to "live" after N answers; unscripted targets are "live"):

====================  ======  ===================  ==========================================
behaviour             HTTP    status               details errorCode / notes
====================  ======  ===================  ==========================================
live                  200     -                    ``{"name": "projects/p/messages/..."}``
unregistered          404     NOT_FOUND            UNREGISTERED
invalid_token         400     INVALID_ARGUMENT     INVALID_ARGUMENT
sender_mismatch       403     PERMISSION_DENIED    SENDER_ID_MISMATCH
quota                 429     RESOURCE_EXHAUSTED   QUOTA_EXCEEDED, ``Retry-After: retry_after``
unavailable           503     UNAVAILABLE          UNAVAILABLE (``retry_after`` optional)
internal              500     INTERNAL             INTERNAL
third_party_auth      401     UNAUTHENTICATED      THIRD_PARTY_AUTH_ERROR
slow                  200     -                    answered after ``delay`` seconds (default 1)
====================  ======  ===================  ==========================================

For topic subscriptions, "unregistered" and "invalid_token" tokens are refused (not consumed).
:meth:`FcmSimulator.drop_connections_after` is a connection-level fault.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from simulators._fcm_auth import ServiceAccount
from simulators._fcm_errors import BEHAVIOURS, ERRORS, google_error, json_response, unauthenticated
from simulators._fcm_topics import TopicApi, TopicRequest
from simulators._fcm_validate import Invalid, check_send, parse_body, topic_name
from simulators._fcm_wire import WireRequest, WireResponse, WireServer

__all__ = ["FcmRequest", "FcmSimulator", "TopicRequest", "BEHAVIOURS"]

_SEND = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_SUBS = re.compile(
    r"^/v1/projects/([^/]+)/registrations/([^/]+)/topicSubscriptions(?:/([^/]+))?$"
)


@dataclass(frozen=True)
class FcmRequest:
    """One ``messages:send`` request as received, with what we answered.

    ``token`` is the registration token, from ``message.token`` or ``message.fid`` (firebase-admin
    7.7 deprecates ``Message(token=)`` for ``Message(fid=)``); ``target`` says which field held
    the recipient. ``status`` is 0 (``error_code`` "CONNECTION_DROPPED") when the connection was
    cut before an answer.
    """

    token: str | None
    topic: str | None
    condition: str | None
    message: dict[str, Any]
    status: int
    error_code: str | None
    received_at: float
    validate_only: bool = False
    http_version: str = "2"
    target: str | None = None  # "token", "fid", "topic" or "condition"


@dataclass
class _Script:
    behaviour: str
    params: dict[str, Any]
    remaining: int | None


class FcmSimulator(TopicApi):
    """FCM + OAuth simulator (see module docstring). Use as ``with FcmSimulator() as sim:``."""

    def __init__(
        self,
        project_id: str = "demo-project",
        *,
        port: int = 0,
        token_lifetime: int = 3600,
        max_concurrent_streams: int = 100,
    ) -> None:
        self.project_id = project_id
        self.port = port
        self._account = ServiceAccount(project_id, token_lifetime)
        self._cond = threading.Condition(threading.RLock())
        self._records: list[FcmRequest] = []
        self._topic_requests: list[TopicRequest] = []
        self._token_requests = 0
        self._scripts: dict[str, _Script] = {}
        self._outage: _Script | None = None
        self._topics: dict[str, set[str]] = {}
        self._drop_after: int | None = None
        self._generation = 0  # bumped by reset() so stale delayed answers can't touch records
        self._ids = itertools.count(1)
        self._server = WireServer(self._handle, self._on_dropped, max_concurrent_streams)
        self._running = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FcmSimulator:
        if self._running:
            raise RuntimeError("already started")
        self.port = self._server.start(self.port)
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._server.stop()
            self._running = False

    def restart(self) -> FcmSimulator:
        """Stop (dropping every connection) and serve again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> FcmSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def send_url(self) -> str:
        """What firebase-admin's ``_MessagingService._fcm_url`` must be."""
        return f"{self.base_url}/v1/projects/{self.project_id}/messages:send"

    @property
    def topic_url(self) -> str:
        """What firebase-admin's ``_MessagingService._fcm_topic_url`` must be."""
        return f"{self.base_url}/v1/projects/{self.project_id}/registrations"

    def service_account_info(self) -> dict[str, str]:
        """A service-account JSON dict whose ``token_uri`` is this simulator (start() first)."""
        if not self._running:
            raise RuntimeError("start the simulator first: token_uri needs its port")
        return self._account.info(self.token_uri)

    # -- scripting -------------------------------------------------------------------------
    def script(
        self, target: str, behaviour: str, *, times: int | None = None, **params: Any
    ) -> None:
        """Script a token (or topic name / condition); params: retry_after, delay."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {sorted(BEHAVIOURS)}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1")
        with self._cond:
            if behaviour == "live":
                self._scripts.pop(topic_name(target), None)
            else:
                self._scripts[topic_name(target)] = _Script(behaviour, params, times)

    def drop_connections_after(self, n: int) -> None:
        """Once: when the n-th next ``messages:send`` arrives, abort every client connection
        without answering it nor any other request still in flight."""
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._cond:
            self._drop_after = n

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far invalid (the next call gets 401)."""
        self._account.expire_all()

    def reset(self) -> None:
        """Forget records, scripts, topic subscriptions and a pending connection drop."""
        with self._cond:
            self._records.clear()
            self._topic_requests.clear()
            self._token_requests = 0
            self._scripts.clear()
            self._outage = None
            self._topics.clear()
            self._drop_after = None
            self._generation += 1

    # -- records ---------------------------------------------------------------------------
    @property
    def records(self) -> list[FcmRequest]:
        with self._cond:
            return list(self._records)

    @property
    def token_requests(self) -> int:
        """How many POST /token requests arrived (granted or not)."""
        with self._cond:
            return self._token_requests

    def delivered(self) -> list[FcmRequest]:
        """Requests answered 200 that target a token (validate_only excluded)."""
        return [r for r in self.records if r.status == 200 and r.token and not r.validate_only]

    def deliveries_by_token(self) -> dict[str, list[FcmRequest]]:
        out: dict[str, list[FcmRequest]] = {}
        for record in self.delivered():
            out.setdefault(record.token or "", []).append(record)
        return out

    def wait_for(
        self, predicate: Callable[[Sequence[FcmRequest]], bool], timeout: float = 10.0
    ) -> None:
        """Block until ``predicate(records)`` holds (records: a read-only live view)."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._records), timeout):
                statuses: dict[int, int] = {}
                for r in self._records:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                raise TimeoutError(
                    f"FCM simulator: predicate still false after {timeout}s; "
                    f"{len(self._records)} send requests recorded, by status {statuses}, "
                    f"{self._token_requests} token requests"
                )

    # -- request handling (event-loop thread) ----------------------------------------------
    def _handle(self, req: WireRequest) -> WireResponse | None:
        if req.method == "POST" and req.path == "/token":
            with self._cond:
                self._token_requests += 1
            status, answer = self._account.grant(req.body, self.token_uri)
            return json_response(status, answer)
        match = _SEND.match(req.path)
        if match and req.method == "POST":
            return self._send(req, urllib.parse.unquote(match.group(1)))
        match = _SUBS.match(req.path)
        if match:
            project, token, topic = (urllib.parse.unquote(g) if g else g for g in match.groups())
            return self._subscription(req, project, token, topic)
        if req.method == "POST" and req.path in ("/iid/v1:batchAdd", "/iid/v1:batchRemove"):
            return self._iid(req, "subscribe" if req.path.endswith("Add") else "unsubscribe")
        return google_error(404, "NOT_FOUND", "The requested URL was not found on this server.")

    def _record(self, record: FcmRequest) -> int:
        with self._cond:
            self._records.append(record)
            self._cond.notify_all()
            return len(self._records) - 1

    def _on_dropped(self, tag: tuple[int, int]) -> None:
        generation, index = tag
        with self._cond:
            if generation == self._generation and index < len(self._records):
                dropped = replace(self._records[index], status=0, error_code="CONNECTION_DROPPED")
                self._records[index] = dropped
                self._cond.notify_all()

    def outage(self, behaviour: str | None = "unavailable") -> None:
        """Answer every send with ``behaviour`` (service-wide) until ``outage(None)``."""
        with self._cond:
            self._outage = None if behaviour is None else _Script(behaviour, {}, None)

    def _take(self, target: str) -> _Script | None:
        with self._cond:
            if self._outage is not None:
                return self._outage
            script = self._scripts.get(target)
            if script is not None and script.remaining is not None:
                script.remaining -= 1
                if script.remaining <= 0:
                    del self._scripts[target]
            return script

    def _send(self, req: WireRequest, project: str) -> WireResponse | None:
        body: dict[str, Any] = {}
        problem: Invalid | None = None
        try:
            body = parse_body(req.body)
        except Invalid as exc:
            problem = exc
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        fields = {k: v if isinstance(v, str) else None for k, v in
                  (("token", message.get("token")), ("fid", message.get("fid")),
                   ("topic", message.get("topic")), ("condition", message.get("condition")))}
        kind = next((k for k, v in fields.items() if v is not None), None)
        token = fields["token"] or fields["fid"]
        validate_only = body.get("validate_only") is True
        now = time.time()

        def record(status: int, code: str | None) -> int:
            return self._record(FcmRequest(token, fields["topic"], fields["condition"], message,
                                           status, code, now, validate_only, req.http_version,
                                           kind))

        with self._cond:
            drop = self._drop_after is not None and self._drop_after <= 1
            if self._drop_after is not None:
                self._drop_after = None if drop else self._drop_after - 1
        if drop:
            record(0, "CONNECTION_DROPPED")
            self._server.cut_all()
            return None
        if not self._account.valid(req.headers.get("authorization")):
            record(401, "UNAUTHENTICATED")
            return unauthenticated()
        if project != self.project_id:
            record(403, "PERMISSION_DENIED")
            return google_error(403, "PERMISSION_DENIED",
                                "Permission 'cloudmessaging.messages.create' denied on resource.")
        if problem is None:
            try:
                check_send(body)
            except Invalid as exc:
                problem = exc
        if problem is not None:
            record(400, "INVALID_ARGUMENT")
            return google_error(400, "INVALID_ARGUMENT", problem.message, "INVALID_ARGUMENT",
                                field=problem.field)
        target = token or topic_name(fields["topic"] or "") or fields["condition"] or ""
        script = self._take(target)
        behaviour = script.behaviour if script else "live"
        params = script.params if script else {}
        if behaviour in ERRORS:
            status, grpc, code, text = ERRORS[behaviour]
            record(status, code)
            extra = []
            if "retry_after" in params or behaviour == "quota":
                extra.append(("retry-after", str(params.get("retry_after", 60))))
            return google_error(status, grpc, text, code, headers=extra)
        index = record(200, None)
        name = (f"projects/{self.project_id}/messages/fake_message_id" if validate_only
                else f"projects/{self.project_id}/messages/0:{next(self._ids)}%sim")
        response = json_response(200, {"name": name})
        if behaviour == "slow":
            response.delay = float(params.get("delay", 1.0))
            response.tag = (self._generation, index)
        return response
