"""Extra CA certificates for clients we don't build ourselves.

firebase-admin makes its own httpx client and google-auth a fresh requests session per
token fetch; neither takes a CA argument. Their only hooks are ``SSL_CERT_FILE`` (httpx,
read when a transport is built) and ``REQUESTS_CA_BUNDLE`` (requests, read per request).
``trust_extra_ca`` points both at the system bundle plus ours, once per process.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

import certifi


@cache
def trust_extra_ca(ca_bundle: Path) -> str:
    fd, combined = tempfile.mkstemp(prefix="notifier-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as out:
        out.write(Path(certifi.where()).read_text())
        out.write("\n")
        out.write(ca_bundle.read_text())
    os.environ["SSL_CERT_FILE"] = combined
    os.environ["REQUESTS_CA_BUNDLE"] = combined
    return combined
