"""The HTTPS wire of the FCM simulator: one :class:`Connection` per TLS connection, speaking
HTTP/2 (RFC 9113, via ``h2``) or HTTP/1.1 (RFC 9112, via ``h11``) as TLS ALPN chose.

It knows nothing about FCM: each complete request is handed to a synchronous handler that
returns a :class:`WireResponse` (optionally delayed) or ``None`` after it asked the server
to cut connections (``_fcm_server.WireServer.cut_all``). Keeping the handler synchronous
(no task per request) is what makes it fast enough for benchmarks. The listener is
``_fcm_server.WireServer``, on the simulator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h11

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WireRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    http_version: str  # "2" or "1.1"


@dataclass
class WireResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0  # seconds to wait before answering
    tag: Any = None  # handed to on_dropped if the connection dies before the answer


Handler = Callable[[WireRequest], "WireResponse | None"]


class Server(Protocol):
    """What a connection needs of its server (``_fcm_server.WireServer``)."""

    handler: Handler
    on_dropped: Callable[[Any], None]  # a delayed answer's tag, when its connection died
    max_streams: int  # SETTINGS_MAX_CONCURRENT_STREAMS
    flow_window: int  # SETTINGS_INITIAL_WINDOW_SIZE, and the connection's window
    conns: set[Connection]  # the open connections
    loop: asyncio.AbstractEventLoop


def _split_target(target: str) -> tuple[str, str]:
    path, _, query = target.partition("?")
    return path, query


class Connection(asyncio.Protocol):
    """One TLS connection; delegates to the HTTP/2 or HTTP/1.1 state machine."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.timers: dict[Any, tuple[asyncio.TimerHandle, Any]] = {}
        self.h2: h2.connection.H2Connection | None = None
        self.h1: h11.Connection | None = None
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.outbox: dict[int, bytes] = {}  # HTTP/2 bodies waiting for flow-control window
        self.h1_busy = False  # HTTP/1.1: a request is being answered; parse no further
        self._h1_req: h11.Request | None = None
        self._h1_body = bytearray()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.conns.add(self)
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None and ssl_obj.selected_alpn_protocol() == "h2":
            config = h2.config.H2Configuration(
                client_side=False,
                header_encoding="utf-8",
                validate_inbound_headers=False,  # speed: we trust our loopback clients
                normalize_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
            self.h2 = h2.connection.H2Connection(config)
            self.h2.local_settings = h2.settings.Settings(
                client=False,
                initial_values={
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.server.flow_window,
                },
            )
            self.h2.initiate_connection()
            opening = self.server.flow_window - self.h2.inbound_flow_control_window
            if opening > 0:  # the connection's window starts at 65,535 whatever the settings say
                self.h2.increment_flow_control_window(opening)
            transport.write(self.h2.data_to_send())
        else:
            self.h1 = h11.Connection(h11.SERVER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.h2 is not None:
            self._h2_received(data)
        else:
            assert self.h1 is not None
            self.h1.receive_data(data)
            self._h1_process()

    # -- common ----------------------------------------------------------------------------
    def _teardown(self) -> None:
        self.closed = True
        self.server.conns.discard(self)
        for handle, tag in self.timers.values():
            handle.cancel()
            if tag is not None:
                self.server.on_dropped(tag)
        self.timers.clear()

    def abort(self) -> None:
        self._teardown()
        if self.transport is not None:
            self.transport.abort()

    def _dispatch(self, key: Any, request: WireRequest) -> None:
        try:
            response = self.server.handler(request)
        except Exception:  # a simulator bug: answer 500 rather than hang the client
            _log.exception("FCM simulator handler failed on a %s request", request.method)
            response = WireResponse(500, b'{"error": "simulator bug"}')
        if response is None or self.closed:
            return
        if response.delay > 0:
            handle = self.server.loop.call_later(response.delay, self._answer_later, key, response)
            self.timers[key] = (handle, response.tag)
        else:
            self._answer(key, response)

    def _answer_later(self, key: Any, response: WireResponse) -> None:
        self.timers.pop(key, None)
        if not self.closed:
            self._answer(key, response)
            if self.h2 is not None:
                self._h2_flush()

    def _answer(self, key: Any, response: WireResponse) -> None:
        if self.h2 is not None:
            self._h2_answer(key, response)
        else:
            self._h1_answer(response)

    # -- HTTP/2 ----------------------------------------------------------------------------
    def _h2_received(self, data: bytes) -> None:
        conn = self.h2
        assert conn is not None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._h2_flush()
            self.abort()
            return
        for event in events:
            if self.closed or not self._h2_event(conn, event):
                return
        self._h2_flush()

    def _h2_event(self, conn: h2.connection.H2Connection, event: h2.events.Event) -> bool:
        """Handle one h2 event; False once the connection is gone."""
        if isinstance(event, h2.events.RequestReceived):
            self.streams[event.stream_id] = (
                {k.lower(): v for k, v in event.headers},  # type: ignore[misc]
                bytearray(),
            )
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream[1].extend(event.data)
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._h2_request(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
            self.outbox.pop(event.stream_id, None)
            timer = self.timers.pop(event.stream_id, None)
            if timer is not None:
                timer[0].cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            self._h2_send_outbox()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._h2_flush()
            if self.transport is not None:
                self.transport.close()
            self._teardown()
            return False
        return True

    def _h2_request(self, stream_id: int) -> None:
        """A request stream ended: hand the complete request to the handler."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            headers, body = stream
            path, query = _split_target(headers.get(":path", "/"))
            request = WireRequest(
                headers.get(":method", "GET"), path, query, headers, bytes(body), "2"
            )
            self._dispatch(stream_id, request)

    def _h2_flush(self) -> None:
        if self.h2 is not None and self.transport is not None and not self.closed:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    def _h2_answer(self, stream_id: int, response: WireResponse) -> None:
        conn = self.h2
        assert conn is not None
        headers = [(":status", str(response.status)), ("content-length", str(len(response.body)))]
        try:
            conn.send_headers(stream_id, headers + response.headers, end_stream=not response.body)
        except h2.exceptions.StreamClosedError:
            return  # the client gave up on this stream
        if response.body:
            self.outbox[stream_id] = response.body
            self._h2_send_outbox()

    def _h2_send_outbox(self) -> None:
        conn = self.h2
        assert conn is not None
        for stream_id in list(self.outbox):
            body = self.outbox[stream_id]
            try:
                while body:
                    window = min(
                        conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                    )
                    if window <= 0:
                        break
                    conn.send_data(stream_id, body[:window])
                    body = body[window:]
                if body:
                    self.outbox[stream_id] = body
                else:
                    del self.outbox[stream_id]
                    conn.end_stream(stream_id)
            except h2.exceptions.StreamClosedError:
                self.outbox.pop(stream_id, None)

    # -- HTTP/1.1 --------------------------------------------------------------------------
    def _h1_process(self) -> None:
        conn = self.h1
        assert conn is not None
        while not self.h1_busy and not self.closed:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self.abort()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._h1_req = event
                self._h1_body = bytearray()
            elif isinstance(event, h11.Data):
                self._h1_body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage):
                req = self._h1_req
                assert req is not None
                path, query = _split_target(req.target.decode("latin-1"))
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
                self.h1_busy = True
                request = WireRequest(
                    req.method.decode(), path, query, headers, bytes(self._h1_body), "1.1"
                )
                self._dispatch("h1", request)
            elif isinstance(event, h11.ConnectionClosed):
                if self.transport is not None:
                    self.transport.close()
                return

    def _h1_answer(self, response: WireResponse) -> None:
        conn = self.h1
        assert conn is not None and self.transport is not None
        headers = [("content-length", str(len(response.body))), *response.headers]
        out = conn.send(h11.Response(status_code=response.status, headers=headers))
        out += conn.send(h11.Data(data=response.body)) + conn.send(h11.EndOfMessage())
        self.transport.write(out)
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
            self.transport.close()
            self._teardown()
            return
        conn.start_next_cycle()
        self.h1_busy = False
        self.server.loop.call_soon(self._h1_process)
