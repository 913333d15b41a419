"""One throwaway certificate authority per process, for the simulators' TLS.

Clients trust it through the CA file at :func:`ca_path` (``NOTIFIER_CA_BUNDLE`` for
notifier's channels); each simulator serves a leaf certificate for 127.0.0.1 and
localhost issued by it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from functools import lru_cache

import trustme

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _ca() -> trustme.CA:
    return trustme.CA()


@lru_cache(maxsize=1)
def ca_path() -> str:
    """Path of a PEM file holding the CA certificate (created once per process)."""
    with _lock:
        fd, path = tempfile.mkstemp(prefix="notifier-sim-ca-", suffix=".pem")
        os.close(fd)
        _ca().cert_pem.write_to_path(path)
        return path


def server_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server-side SSL context with a leaf for 127.0.0.1/localhost."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _ca().issue_cert("127.0.0.1", "localhost", "::1").configure_cert(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_context() -> ssl.SSLContext:
    """A client-side SSL context that trusts the simulators' CA."""
    ctx = ssl.create_default_context(cafile=ca_path())
    return ctx
