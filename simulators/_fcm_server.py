"""The FCM simulator's HTTPS listener: TLS with ALPN "h2" and "http/1.1" on 127.0.0.1, one
``_fcm_wire.Connection`` per client connection, on the simulator's event loop (the loop
and its thread are :mod:`simulators.base`'s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from simulators import tls
from simulators._fcm_wire import Connection, Handler


class WireServer:
    """Serves ``handler`` over HTTPS (h2 + http/1.1) on 127.0.0.1."""

    def __init__(
        self,
        handler: Handler,
        on_dropped: Callable[[Any], None],
        max_streams: int = 100,
        flow_window: int = 1 << 20,
    ) -> None:
        self.handler = handler
        self.on_dropped = on_dropped
        self.max_streams = max_streams
        self.flow_window = flow_window
        self.conns: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop  # set by listen()
        self._server: asyncio.Server | None = None

    async def listen(self, port: int) -> int:
        """Bind and serve on the running loop; returns the bound port."""
        self.loop = asyncio.get_running_loop()
        ctx = tls.server_context(alpn=["h2", "http/1.1"])
        self._server = await self.loop.create_server(
            lambda: Connection(self), "127.0.0.1", port, ssl=ctx, backlog=1024, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    def abort_all(self) -> None:
        """Abruptly close every open connection (call on the loop thread)."""
        for conn in list(self.conns):
            conn.abort()

    def cut_all(self) -> None:
        """The scripted connection drop (call on the loop thread).

        Answers already given leave first: they are flushed, and the socket is closed a
        moment later (closing at once makes the kernel reset the connection and discard
        them, which would turn "answered" into "lost" behind the records' back). From the
        cut on, nothing more is read or answered, and every request still unanswered is
        recorded as dropped.
        """
        for conn in list(self.conns):
            conn._h2_flush()
            conn._teardown()
            if conn.transport is not None:
                self.loop.call_later(0.1, conn.transport.abort)

    async def close(self) -> None:
        """Stop listening and abort every connection (on the loop thread)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.abort_all()
        if server is not None:
            await server.wait_closed()
