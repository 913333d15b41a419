"""The HTTP/2 side of the APNs simulator: one :class:`H2ServerProtocol` per TCP connection.

It turns h2 events into complete requests, asks its :class:`Host` (the simulator)
for an :class:`Answer`, and writes that answer back while honouring HTTP/2 flow
control (RFC 9113 §5.2, §6.9): response bodies never exceed the client's window and
wait in a queue until WINDOW_UPDATE frames open it. It advertises
SETTINGS_MAX_CONCURRENT_STREAMS like APNs: 1000, dropping to 1 after a rejected
notification until the next success. A new limit applies once the client has ACKed
it (§6.5.3); a request stream over it is refused with RST_STREAM(REFUSED_STREAM), a
stream error that leaves the connection and its other streams alone (§5.1.2, §8.7).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings

from simulators._apns_h2fast import FastH2Connection, StreamRefused

log = logging.getLogger("simulators.apns")

MAX_STREAMS_NORMAL = 1000
MAX_STREAMS_AFTER_REJECTION = 1


@dataclass(frozen=True, slots=True)
class Answer:
    """What to do with one request stream.

    kind: "respond" (headers, plus a JSON body when ``body``), "empty_data" (200
    headers then an empty DATA frame with END_STREAM), "silent" (never answer),
    "reset" (RST_STREAM with ``reset_code``).
    """

    kind: str
    status: int = 200
    apns_id: str = ""
    body: bytes = b""
    delay: float = 0.0
    reset_code: int = ErrorCodes.INTERNAL_ERROR


class Host(Protocol):
    partial_data: bool

    def handle(self, connection_id: int, method: str, path: str,
               headers: list[tuple[str, str]], body: bytes) -> Answer: ...
    def streams_delta(self, delta: int) -> None: ...
    def refused(self, connection_id: int, headers: list[tuple[str, str]]) -> None: ...
    def connection_opened(self, protocol: H2ServerProtocol) -> None: ...
    def connection_closed(self, protocol: H2ServerProtocol) -> None: ...


class _Stream:
    __slots__ = ("body", "headers")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.body = bytearray()


class H2ServerProtocol(asyncio.Protocol):
    def __init__(self, host: Host, connection_id: int) -> None:
        self.host = host
        self.connection_id = connection_id
        self.max_concurrent_streams = MAX_STREAMS_NORMAL  # what we last advertised
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.conn = FastH2Connection(H2Configuration(
            client_side=False, header_encoding="utf-8",
            # our own response headers are known-good: skip h2's per-header checks;
            # a request's are checked by FastH2Connection, in one pass (_apns_h2fast (5))
            validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False))
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS_NORMAL,
            SettingCodes.MAX_HEADER_LIST_SIZE: 8000,
        })
        self.transport: asyncio.Transport | None = None
        self._requests: dict[int, _Stream] = {}  # stream id -> request being received
        self._open: set[int] = set()  # streams not yet ended by us
        self.pending: dict[int, bytes] = {}  # stream id -> response body waiting for window

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.host.connection_opened(self)
        self.conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:  # h2 has queued a GOAWAY
            log.debug("connection %d: protocol error %s", self.connection_id, exc)
            self._flush()
            self.abort(graceful=True)
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._requests[event.stream_id] = _Stream(event.headers)  # type: ignore[arg-type]
                self._open.add(event.stream_id)
                self.host.streams_delta(+1)
            elif isinstance(event, DataReceived):
                stream = self._requests.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamRefused):  # already reset: nothing else to do
                log.debug("connection %d: refused stream %d (%d open, limit %d)",
                          self.connection_id, event.stream_id, event.open_streams, event.limit)
                self.host.refused(self.connection_id, event.headers)
            elif isinstance(event, StreamEnded):
                self._request_complete(event.stream_id)
            elif isinstance(event, StreamReset):
                self._requests.pop(event.stream_id, None)
                self.pending.pop(event.stream_id, None)
                self._stream_done(event.stream_id)
            elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
                self._pump()
            elif isinstance(event, ConnectionTerminated):
                self.abort(graceful=True)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.streams_delta(-len(self._open))
        self._open.clear()
        self.pending.clear()
        self.host.connection_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self, graceful: bool = False) -> None:
        if self.transport is not None:
            self.transport.close() if graceful else self.transport.abort()

    # -- answering ------------------------------------------------------------------
    def _request_complete(self, stream_id: int) -> None:
        stream = self._requests.pop(stream_id, None)
        if stream is None:
            return
        pseudo = {k: v for k, v in stream.headers if k.startswith(":")}
        answer = self.host.handle(self.connection_id, pseudo.get(":method", ""),
                                  pseudo.get(":path", ""), stream.headers, bytes(stream.body))
        if answer.delay > 0:
            asyncio.get_running_loop().call_later(answer.delay, self._answer_later, stream_id, answer)
        else:
            self._answer(stream_id, answer)

    def _answer_later(self, stream_id: int, answer: Answer) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._answer(stream_id, answer)
            self._flush()

    def _answer(self, stream_id: int, answer: Answer) -> None:
        if answer.kind == "silent" or stream_id not in self._open:
            return
        try:
            if answer.kind == "reset":
                self.conn.reset_stream(stream_id, answer.reset_code)
                self._stream_done(stream_id)
                return
            headers = [(":status", str(answer.status)), ("apns-id", answer.apns_id)]
            if answer.kind == "empty_data":
                self.conn.send_headers(stream_id, headers)
                self.conn.send_data(stream_id, b"", end_stream=True)
                self._stream_done(stream_id)
            elif answer.body:
                headers.append(("content-type", "application/json; charset=utf-8"))
                self.conn.send_headers(stream_id, headers)
                self.pending[stream_id] = answer.body
                self._pump()
            else:
                self.conn.send_headers(stream_id, headers, end_stream=True)
                self._stream_done(stream_id)
        except StreamClosedError:  # the client reset it meanwhile
            self._stream_done(stream_id)
            return
        self._advertise(MAX_STREAMS_NORMAL if answer.status == 200 else MAX_STREAMS_AFTER_REJECTION)

    def _advertise(self, max_streams: int) -> None:
        if max_streams != self.max_concurrent_streams:
            self.max_concurrent_streams = max_streams
            self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})

    def _pump(self) -> None:
        """Send queued bodies as far as the client's flow-control windows allow."""
        for stream_id in list(self.pending):
            if self.conn.outbound_flow_control_window <= 0:
                return
            body = self.pending[stream_id]
            try:
                window = self.conn.local_flow_control_window(stream_id)
                if not self.host.partial_data and window < len(body):
                    continue  # whole body or nothing
                while body and window > 0:
                    size = min(window, self.conn.max_outbound_frame_size, len(body))
                    self.conn.send_data(stream_id, body[:size], end_stream=size == len(body))
                    body, window = body[size:], window - size
            except StreamClosedError:
                body = b""
            if body:
                self.pending[stream_id] = body
            else:
                del self.pending[stream_id]
                self._stream_done(stream_id)

    def _stream_done(self, stream_id: int) -> None:
        if stream_id in self._open:
            self._open.discard(stream_id)
            self.host.streams_delta(-1)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
