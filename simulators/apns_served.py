"""APNs for throughput runs: the provider API served by Granian in a process of its own.

:class:`simulators.apns.ApnsSimulator` speaks HTTP/2 through h2, in Python, so that it
can misbehave on the wire as Apple's servers do (refused streams, a limit of one
stream after a rejection, stalled flow control, scripted errors): what the tests need.
That costs it 161-168 µs of CPU a request on this machine (the APNs channel, sending
30,000 from another process, spent 229-238), and on the bench's two cores that CPU is
taken from the pipeline it measures, where Apple's servers take none of a deployment's.

:class:`ServedApnsSimulator` answers the same requests with the same checks
(``simulators._apns_wire.validate``: method, path, provider token, headers, device
token, payload; Apple's statuses and reasons) through Granian: hyper's HTTP/2 and
rustls's TLS, with ALPN h2 and the HTTP/2 settings ApnsSimulator sends (1000 streams,
64 KiB windows, 8000-byte header lists), and the check itself in Python
(``simulators._apns_wsgi``): 44 µs a request in the same measurement (one run). It has
no scripted behaviours and keeps counts, not records. What WSGI hides from it, so that
it answers 200 where ApnsSimulator would not: a header sent twice (joined into one), a
header name spelt with ``_`` for ``-``, a value that is not ASCII (Granian passes it
empty), and a percent-encoded path (Granian decodes it). aioapns sends none of these.
``notifier bench`` sends its APNs broadcasts and ceilings to it.

    with ServedApnsSimulator(team_id, {key_id: public_pem}) as apns:
        ...  # send to apns.base_url, trusting simulators.tls.ca_path()
        apns.delivered_count()  # 200 answers since start or reset()
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from simulators import tls

START_TIMEOUT = 30.0
POLL = 0.02  # seconds between two looks at the counts, waiting for a number of deliveries
# what the child process needs of ours; Granian copies its whole environment into every
# request's WSGI environ, where an HTTP_* variable would read as a request header
_KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


class ServedApnsSimulator:
    def __init__(self, team_id: str, keys: dict[str, str], *, token_max_age: float = 3600.0) -> None:
        self.team_id = team_id
        self._keys = dict(keys)
        self._token_max_age = token_max_age
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._port_hold: socket.socket | None = None
        self._admin_conn: http.client.HTTPSConnection | None = None
        self._nonce = ""

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def process_group(self) -> int | None:
        """The process group of Granian and its worker (where their CPU time is counted)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        if self._proc is not None:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="notifier-apns-served-"))
        leaf = tls._ca().issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self._dir / "key.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(self._dir / "cert.pem"))
        self._nonce = uuid.uuid4().hex  # stats answer with it: this process, not another on the port
        env = {k: v for k, v in os.environ.items() if k in _KEPT_ENVIRONMENT}
        env.update(SIM_APNS_TEAM=self.team_id, SIM_APNS_KEYS=json.dumps(self._keys),
                   SIM_APNS_TOKEN_MAX_AGE=str(self._token_max_age), SIM_APNS_NONCE=self._nonce)
        # Granian binds with SO_REUSEPORT: the port stays bound here (not listening) for
        # the simulator's life, so that no other bind(0) is handed it meanwhile
        self._port_hold = socket.socket()
        self._port_hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._port_hold.bind(("127.0.0.1", 0))
        self.port = int(self._port_hold.getsockname()[1])
        with open(self._dir / "granian.log", "wb") as log_file:  # the child keeps its own copy
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "1", "--blocking-threads", "1",
                 "--http", "auto", "--no-ws", "--workers-kill-timeout", "1",
                 # what ApnsSimulator (and APNs) send: simulators/_apns_server.py
                 "--http2-max-concurrent-streams", "1000", "--http2-max-headers-size", "8000",
                 "--http2-initial-stream-window-size", "65535", "--http2-initial-connection-window-size", "65535",
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--ssl-certificate", str(self._dir / "cert.pem"), "--ssl-keyfile", str(self._dir / "key.pem"),
                 "--log-level", "warning", "--no-access-log", "simulators._apns_wsgi:app"],
                env=env, cwd=Path(__file__).resolve().parent.parent, process_group=0,
                stdout=subprocess.DEVNULL, stderr=log_file)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                stats = self._admin("GET", "stats")
                if stats.get("nonce") != self._nonce:
                    raise RuntimeError(f"another server answers on port {self.port}")
                return
            except (OSError, http.client.HTTPException):
                self._admin_conn = None
            try:  # waits POLL for the listener, and notices a Granian that exited
                code = self._proc.wait(POLL)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None or time.monotonic() > deadline:
                log = (self._dir / "granian.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the served APNs simulator did not start (exit {code}): {log}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if self._admin_conn is not None:
            self._admin_conn.close()
            self._admin_conn = None
        if proc is not None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)  # the worker too, whatever became of the main process
            proc.wait()
        if self._port_hold is not None:
            self._port_hold.close()
            self._port_hold = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- counts ------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Answers since start or reset(): "delivered" (a token's first 200), "repeated"
        (a 200 for a token answered 200 before), and one count per rejection reason."""
        stats = self._admin("GET", "stats")
        return {k: v for k, v in stats.items() if k not in ("nonce", "last_delivered_at")}

    def delivered_count(self) -> int:
        """Every 200 answered, repeats included (as ApnsSimulator counts its records)."""
        return _answered_200(self.stats())

    def unique_deliveries(self) -> int:
        """Tokens answered 200 at least once."""
        return self.stats().get("delivered", 0)

    def wait_delivered(self, count: int, timeout: float = 10.0) -> float:
        """Until ``count`` 200s in all; returns when the last of them was answered (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self._admin("GET", "stats")
            if (seen := _answered_200(stats)) >= count:
                return float(stats["last_delivered_at"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"APNs (served): {seen} delivered, not {count}, within {timeout} s")
            time.sleep(POLL)  # the counts live in another process: look again

    def reset(self) -> None:
        self._admin("POST", "reset")

    def _admin(self, method: str, what: str) -> dict[str, Any]:
        """One request on a kept-alive HTTP/1.1 connection (opened again when it broke)."""
        for attempt in (1, 2):
            if self._admin_conn is None:
                self._admin_conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                                               context=tls.client_context())
            try:
                self._admin_conn.request(method, f"/__sim/{what}")
                response = self._admin_conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self._admin_conn.close()
                self._admin_conn = None
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"the served APNs simulator answered {response.status} to {what}")
            return json.loads(body)  # type: ignore[no-any-return]
        raise AssertionError("unreachable")


def _answered_200(stats: dict[str, Any]) -> int:
    return int(stats.get("delivered", 0)) + int(stats.get("repeated", 0))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
