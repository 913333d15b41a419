"""What an HTTP/2 server tells a client at connect, read with a raw h2 client."""

from __future__ import annotations

import socket

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import PingAckReceived

from simulators import tls


def opening_settings(port: int) -> tuple[int, int, int, int]:
    """(MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE, the connection's
    window) that a raw h2 client is given at connect by the simulator on ``port``."""
    ctx = tls.client_context()
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain, \
            ctx.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
        conn = H2Connection(H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.ping(b"12345678")  # answered after the server's SETTINGS and any WINDOW_UPDATE
        sock.sendall(conn.data_to_send())
        acked = False
        while not acked:
            data = sock.recv(65536)
            assert data, "closed before answering the PING"
            acked = any(isinstance(e, PingAckReceived) for e in conn.receive_data(data))
            sock.sendall(conn.data_to_send())
        remote = conn.remote_settings
        return (remote.max_concurrent_streams, remote.initial_window_size, remote.max_header_list_size or 0,
                conn.outbound_flow_control_window)
