"""A thin, documented layer over aioapns 4.0's HTTP/2 protocol that fixes its defects.

Each fix is an override of one aioapns hook, not a copy of its code; each has a
regression test against the APNs simulator (tests/integration/test_apns.py).

(a) aioapns never acknowledges received DATA, so the peer's flow-control window
    drains: after ~1,285 error bodies on one connection APNs can't answer anything.
    ``_AckingH2Connection.receive_data`` acknowledges every DATA frame as it arrives.
(b) answered streams stay in ``request_streams`` (200s never remove theirs), so memory
    grows for a connection's life. ``on_stream_ended`` drops the entry.
(c) a request waits forever when its stream is reset, when an error status arrives
    without a JSON body, or when the server never answers. Resets and body-less ends
    resolve the request here; each stream on the wire gets a timer that answers it as
    timed out (and resets it, freeing its slot); a request cancelled by the caller is
    cleaned up the same way.
(d) a 200 followed by an empty DATA frame makes ``json.loads(b"")`` raise inside
    ``data_received``, which kills the connection. Empty or non-JSON bodies are ignored.
(e) its CONNECT-proxy path hangs on Python >= 3.9: ``open_tunnel`` makes the CONNECT
    tunnel itself and hands aioapns a connected socket.
(g) its stream-slot semaphore miscounts when the server changes
    SETTINGS_MAX_CONCURRENT_STREAMS, as APNs does after every rejected notification
    (1000 -> 1 -> 1000): raising the bound clamps at the old bound, lowering it then
    drives the count to about -1000 with nothing left in flight, and the connection is
    "busy" for ever. ``_StreamSlots`` counts streams in flight against the current bound.
(h) it writes to the socket after every request: on a connection that is not already
    backed up, each device costs its own TLS record and ``send()``, and a new inactivity
    timer (18 % of an APNs pool process's time in the bench's profile, against 5 % in the
    ceiling's single busier connection). ``flush`` writes every 16 requests, and what is
    left on the event loop's next pass.
(f), in ``notifier.apns``, is the pool's busy loop that never reconnects.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections import deque
from typing import Any

from aioapns.common import NotificationRequest, NotificationResult
from aioapns.connection import APNsTLSClientProtocol, ChannelPool
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, Event, StreamReset
from h2.exceptions import ProtocolError


class _AckingH2Connection(H2Connection):
    """Fixes (a) and part of (c) where h2 hands events to aioapns.

    Also (b): h2 remembers the last 65,536 closed streams (for late frames); a connection
    that lives for millions of sends needs only the recent ones, so memory stays flat
    after the first thousand instead of growing for the first 65,536.
    """

    MAX_CLOSED_STREAMS = 1000

    def __init__(self, owner: HardenedProtocol) -> None:
        super().__init__()
        self._owner = owner

    def send_headers(self, stream_id: int, headers: Any, *args: Any, **kwargs: Any) -> None:
        try:
            super().send_headers(stream_id, headers, *args, **kwargs)
        except ProtocolError:  # e.g. over the server's stream limit: give the slot back
            self._owner.free_channels.release()
            raise
        self._owner.on_stream_opened(stream_id)

    def receive_data(self, data: Any) -> list[Event]:  # h2 types it as a Buffer
        events = super().receive_data(data)
        kept: list[Event] = []
        for event in events:
            if isinstance(event, DataReceived) and event.flow_controlled_length and event.stream_id:
                self.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if isinstance(event, StreamReset):
                self._owner.on_stream_reset(event.stream_id, event.error_code)
                continue  # aioapns would only log "Unknown event" and leak the request
            kept.append(event)
        return kept


class _StreamSlots(ChannelPool):
    """Fix (g): aioapns's ChannelPool interface, counting streams in flight against the
    server's current limit instead of adjusting a semaphore value."""

    def __init__(self, bound: int) -> None:
        super().__init__(bound)
        self._in_flight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    @property
    def bound(self) -> int:
        return self._bound_value

    @bound.setter
    def bound(self, new_bound: int) -> None:
        self._bound_value = new_bound
        self._wake()

    @property
    def is_busy(self) -> bool:
        return self._in_flight >= self._bound_value

    async def acquire(self) -> int:  # type: ignore[override]
        while self._in_flight >= self._bound_value:
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # we were handed a slot we won't use: pass it on
                raise
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
        self._in_flight += 1
        self._stream_id += 2
        if self._stream_id > H2Connection.HIGHEST_ALLOWED_STREAM_ID:
            from h2.exceptions import NoAvailableStreamIDError

            raise NoAvailableStreamIDError()
        return self._stream_id

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._wake()

    def _wake(self) -> None:
        room = self._bound_value - self._in_flight
        while room > 0 and self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    def destroy(self, exc: Exception) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)


class HardenedProtocol(APNsTLSClientProtocol):
    """aioapns's protocol with fixes (a)-(d) and (h). Subclass it with APNS_SERVER/APNS_PORT set."""

    # Seconds a stream may wait for its answer once it is on the wire. Time spent waiting
    # for a free stream (APNs allows one after a rejection) is not counted here.
    STREAM_TIMEOUT = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _AckingH2Connection(self)
        self.free_channels = _StreamSlots(1000)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._unflushed = 0

    # (h) at most this many flushes wait for the end of the loop's pass: enough to save
    # most writes, few enough that the server starts on the first requests while the
    # rest are still being built (one write per pass made client and server take turns).
    FLUSH_EVERY = 16

    def flush(self) -> None:
        """(h) write every ``FLUSH_EVERY`` requests, and what is left on the loop's next pass."""
        self._unflushed += 1
        if self._unflushed >= self.FLUSH_EVERY:
            self._flush_now()
        elif self._unflushed == 1:
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        if self._unflushed and self.transport is not None and not self.transport.is_closing():
            super().flush()
        self._unflushed = 0

    def on_stream_opened(self, stream_id: int) -> None:
        """(c) a server that never answers: the stream times out on its own."""
        self._timers[stream_id] = self.loop.call_later(self.STREAM_TIMEOUT, self._expire, stream_id)

    def _stop_timer(self, stream_id: int) -> None:
        timer = self._timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, stream_id: int) -> None:
        self._timers.pop(stream_id, None)
        if stream_id not in self.request_streams:
            return
        self._resolve(stream_id, "timeout", f"no answer within {self.STREAM_TIMEOUT:g}s")
        try:
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            self.flush()
        except Exception:  # the stream or the connection is already gone
            pass
        self.free_channels.release()

    def _resolve(self, stream_id: int, status: str, reason: str) -> None:
        nid = self.request_streams.pop(stream_id, None)
        if nid is None:
            return
        self.request_statuses.pop(nid, None)
        future = self.requests.pop(nid, None)
        if future is not None and not future.done():
            future.set_result(NotificationResult(nid, status, description=reason))

    def on_stream_reset(self, stream_id: int, code: ErrorCodes | int) -> None:
        """(c) a reset stream: answer the request as a transient failure, free the slot."""
        self._stop_timer(stream_id)
        self._resolve(stream_id, "reset", f"stream reset ({code})")
        self.free_channels.release()

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        """(d) tolerate an empty or non-JSON body; aioapns parses it unguarded."""
        try:
            body = json.loads(raw_data.decode() or "null")
        except ValueError:
            return
        if isinstance(body, dict):
            super().on_data_received(raw_data, stream_id)

    def on_stream_ended(self, stream_id: int) -> None:
        """(b) forget the answered stream; (c) resolve an error that came without a body."""
        self._stop_timer(stream_id)
        nid = self.request_streams.get(stream_id)
        if nid is not None:
            status = self.request_statuses.get(nid, "")
            self._resolve(stream_id, status or "200", "")
        super().on_stream_ended(stream_id)

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        """(c) when the caller's timeout cancels a send, undo what aioapns left behind."""
        try:
            return await super().send_notification(request)
        except asyncio.CancelledError:
            self._abandon(request.notification_id)
            raise

    def _abandon(self, nid: str) -> None:
        future = self.requests.pop(nid, None)
        if future is None:
            return  # cancelled before the stream was opened: nothing to undo
        if not future.done():
            future.cancel()
        self.request_statuses.pop(nid, None)
        for stream_id, owner in list(self.request_streams.items()):
            if owner == nid:
                del self.request_streams[stream_id]
                self._stop_timer(stream_id)
                try:
                    self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
                    self.flush()
                except Exception:  # the stream or connection is already gone
                    pass
                self.free_channels.release()

    def connection_lost(self, exc: Exception | None) -> None:
        # aioapns sets an exception on every pending future, including cancelled ones
        # (InvalidStateError); drop those first.
        for nid, future in list(self.requests.items()):
            if future.done():
                del self.requests[nid]
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        super().connection_lost(exc)


def protocol_for(host: str, port: int, stream_timeout: float) -> type[HardenedProtocol]:
    """The hardened protocol pointed at one APNs endpoint (Apple's, or a simulator)."""
    attrs = {"APNS_SERVER": host, "APNS_PORT": port, "STREAM_TIMEOUT": stream_timeout}
    return type("ApnsProtocol", (HardenedProtocol,), attrs)


async def open_tunnel(proxy_host: str, proxy_port: int, host: str, port: int, timeout: float) -> socket.socket:
    """(e) an HTTP CONNECT tunnel to host:port through a proxy, as a connected socket."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (proxy_host, proxy_port))
            await loop.sock_sendall(sock, f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise ConnectionError("proxy closed the connection during CONNECT")
                head += chunk
                if len(head) > 16384:
                    raise ConnectionError("proxy answered CONNECT with an oversized header")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if status_line.split(" ")[1:2] != ["200"]:
            raise ConnectionError(f"proxy refused CONNECT: {status_line}")
        return sock
    except BaseException:
        sock.close()
        raise


def client_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_bundle:
        ctx.load_verify_locations(cafile=ca_bundle)
    ctx.set_alpn_protocols(["h2"])
    return ctx
