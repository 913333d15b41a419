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

At connect it advertises SETTINGS_MAX_CONCURRENT_STREAMS 100, MAX_HEADER_LIST_SIZE 65,536
and INITIAL_WINDOW_SIZE 1 MiB, the settings Google's front ends send, and opens the
connection's window to 1 MiB too (what Google opens it to was not checked here). With
h2's default 64 KiB windows, httpcore (under firebase-admin's httpx client) left a few
requests per 10,000 waiting for window until their timeout, unsent, when four processes
on two cores each had 100 in flight (``DEADLINE_EXCEEDED``, retried by the pipeline: run
J of the bench, 25-44 retries a run, and its mixed ratio 0.55). ``flow_window`` sets both
(the connection's window only opens: below 65,535 it stays there).

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
``outage()`` answers every valid send "unavailable" (any behaviour above can be given) until
``outage(None)``. :meth:`FcmSimulator.drop_connections_after` is a connection-level fault,
:meth:`FcmSimulator.expire_access_tokens` makes the next call with an old token get 401.

Records are :class:`FcmRequest` (``messages:send`` only); ``deliveries_by_token()`` counts the
200s per registration token (``validate_only`` and topic/condition sends excluded). The
lifecycle, recorder, scripts, outage and ``wait_for`` are :mod:`simulators.base`'s; FCM adds
``token_requests``, ``topic_requests``, ``topic_members(topic)`` and ``service_account_info()``.
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from simulators._fcm_auth import ServiceAccount
from simulators._fcm_errors import BEHAVIOURS, ERRORS, google_error, json_response, unauthenticated
from simulators._fcm_server import WireServer
from simulators._fcm_topics import TopicApi, TopicRequest
from simulators._fcm_validate import Invalid, ParsedSend, check_send, topic_name
from simulators._fcm_wire import WireRequest, WireResponse
from simulators.base import Script, SimulatorBase

__all__ = ["BEHAVIOURS", "FcmRequest", "FcmSimulator", "TopicRequest"]

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


class FcmSimulator(SimulatorBase[FcmRequest, str]):
    """FCM + OAuth simulator (see module docstring). Use as ``with FcmSimulator() as sim:``."""

    name = "FCM"
    behaviours = BEHAVIOURS
    outage_default = ("unavailable", {})

    def __init__(
        self,
        project_id: str = "demo-project",
        *,
        port: int = 0,
        token_lifetime: int = 3600,
        max_concurrent_streams: int = 100,
        flow_window: int = 1 << 20,
    ) -> None:
        """``max_concurrent_streams`` and ``flow_window`` (each stream's and the
        connection's HTTP/2 receive window) are what the client is told at connect."""
        super().__init__(port)
        self.project_id = project_id
        self._account = ServiceAccount(project_id, token_lifetime)
        self._topics = TopicApi(project_id, self._account, self._cond, self._scripted_behaviour,
                                self._notify)
        self._token_requests = 0
        self._drop_after: int | None = None
        self._generation = 0  # bumped by reset() so stale delayed answers can't touch records
        self._ids = itertools.count(1)
        self._server = WireServer(self._handle, self._on_dropped, max_concurrent_streams, flow_window)

    # -- SimulatorBase ---------------------------------------------------------------------
    async def _listen(self, port: int) -> int:
        return await self._server.listen(port)

    async def _close(self) -> None:
        await self._server.close()

    def _delivery_key(self, record: FcmRequest) -> str | None:
        ok = record.status == 200 and record.token and not record.validate_only
        return record.token if ok else None

    def _script_key(self, target: str) -> str:
        return topic_name(target)

    def _summary(self, record: FcmRequest) -> object:
        return record.status, record.error_code

    def _timeout_detail(self) -> str:
        return f"; {self._token_requests} token requests"

    def _scripted_behaviour(self, token: str) -> str | None:
        script = self._scripted(token)
        return script.behaviour if script is not None else None

    # -- FCM-specific ----------------------------------------------------------------------
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
        if not self.running:
            raise RuntimeError("start the simulator first: token_uri needs its port")
        return self._account.info(self.token_uri)

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
        """Forget records, scripts, the outage, token and topic requests, topic subscriptions
        and a pending connection drop."""
        with self._cond:
            super().reset()
            self._topics.clear()
            self._token_requests = 0
            self._drop_after = None
            self._generation += 1

    @property
    def token_requests(self) -> int:
        """How many POST /token requests arrived (granted or not)."""
        with self._cond:
            return self._token_requests

    @property
    def topic_requests(self) -> list[TopicRequest]:
        """Every topic-management request, in order."""
        return self._topics.requests

    def topic_members(self, topic: str) -> set[str]:
        """Tokens currently subscribed to ``topic`` (with or without "/topics/")."""
        return self._topics.members(topic)

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
            return self._topics.subscription(req, project, token, topic)
        if req.method == "POST" and req.path in ("/iid/v1:batchAdd", "/iid/v1:batchRemove"):
            return self._topics.iid(req, "subscribe" if req.path.endswith("Add") else "unsubscribe")
        return google_error(404, "NOT_FOUND", "The requested URL was not found on this server.")

    def _on_dropped(self, tag: tuple[int, int]) -> None:
        generation, index = tag
        with self._cond:
            if generation == self._generation and index < len(self._records):
                dropped = replace(self._records[index], status=0, error_code="CONNECTION_DROPPED")
                self._replace(index, dropped)

    def _take_drop(self) -> bool:
        """Count a send towards ``drop_connections_after``; True when this one is cut."""
        with self._cond:
            drop = self._drop_after is not None and self._drop_after <= 1
            if self._drop_after is not None:
                self._drop_after = None if drop else self._drop_after - 1
        return drop

    def _send(self, req: WireRequest, project: str) -> WireResponse | None:
        send = ParsedSend.parse(req.body)
        now = time.time()

        def record(status: int, code: str | None) -> int:
            return self._record(FcmRequest(
                send.token, send.fields["topic"], send.fields["condition"], send.message, status,
                code, now, send.validate_only, req.http_version, send.kind))

        if self._take_drop():
            record(0, "CONNECTION_DROPPED")
            self._server.cut_all()
            return None
        rejected = self._reject(req, project, send)
        if rejected is not None:
            record(rejected[0], rejected[1])
            return rejected[2]
        target = send.token or topic_name(send.fields["topic"] or "") or send.fields["condition"] or ""
        return self._answer(self._take(target), send, record)

    def _reject(self, req: WireRequest, project: str,
                send: ParsedSend) -> tuple[int, str, WireResponse] | None:
        """Authentication, project and body checks: (status, error code, answer) or None."""
        if not self._account.valid(req.headers.get("authorization")):
            return 401, "UNAUTHENTICATED", unauthenticated()
        if project != self.project_id:
            return 403, "PERMISSION_DENIED", google_error(
                403, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages.create' denied on resource.")
        problem = send.problem
        if problem is None:
            try:
                check_send(send.body)
            except Invalid as exc:
                problem = exc
        if problem is not None:
            return 400, "INVALID_ARGUMENT", google_error(
                400, "INVALID_ARGUMENT", problem.message, "INVALID_ARGUMENT", field=problem.field)
        return None

    def _answer(self, script: Script, send: ParsedSend,
                record: Callable[[int, str | None], int]) -> WireResponse:
        """The scripted answer to a valid send."""
        behaviour, params = script.behaviour, script.params
        if behaviour in ERRORS:
            status, grpc, code, text = ERRORS[behaviour]
            record(status, code)
            extra = []
            if "retry_after" in params or behaviour == "quota":
                extra.append(("retry-after", str(params.get("retry_after", 60))))
            return google_error(status, grpc, text, code, headers=extra)
        index = record(200, None)
        name = (f"projects/{self.project_id}/messages/fake_message_id" if send.validate_only
                else f"projects/{self.project_id}/messages/0:{next(self._ids)}%sim")
        response = json_response(200, {"name": name})
        if behaviour == "slow":
            response.delay = float(params.get("delay", 1.0))
            response.tag = (self._generation, index)
        return response
