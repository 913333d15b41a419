"""APNs for throughput runs: the provider API served by Granian in a process of its own.

:class:`simulators.apns.ApnsSimulator` speaks HTTP/2 through h2, in Python, so that it
can misbehave on the wire as Apple's servers do (refused streams, a limit of one
stream after a rejection, stalled flow control, scripted errors): what the tests need.
That costs it ~165 µs of CPU a request, about two thirds of what the APNs channel
itself spends, and on the bench's two cores that CPU is taken from the pipeline it
measures, where Apple's servers take none of a deployment's.

:class:`ServedApnsSimulator` answers the same requests with the same checks
(``simulators._apns_wire.validate``: method, path, provider token, headers, device
token, payload; Apple's statuses and reasons) through Granian: hyper's HTTP/2 and
rustls's TLS, with ALPN h2 and SETTINGS_MAX_CONCURRENT_STREAMS 1000 as APNs advertises,
and the check itself in Python (``simulators._apns_wsgi``): ~45 µs a request. It has no
scripted behaviours and keeps counts, not records; it cannot see a header sent twice
(WSGI joins them). ``notifier bench`` sends its broadcasts and ceilings to it.

    with ServedApnsSimulator(team_id, {key_id: public_pem}) as apns:
        ...  # send to apns.base_url, trusting simulators.tls.ca_path()
        apns.delivered_count()  # 200 answers since start or reset()
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from simulators import tls

START_TIMEOUT = 30.0
POLL = 0.05  # seconds between two looks at the counts, waiting for a number of deliveries


class ServedApnsSimulator:
    def __init__(self, team_id: str, keys: dict[str, str], *, token_max_age: float = 3600.0) -> None:
        self.team_id = team_id
        self._keys = dict(keys)
        self._token_max_age = token_max_age
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

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
        self._dir = Path(tempfile.mkdtemp(prefix="notifier-apns-served-"))
        leaf = tls._ca().issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self._dir / "key.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(self._dir / "cert.pem"))
        env = {**os.environ, "SIM_APNS_TEAM": self.team_id, "SIM_APNS_KEYS": json.dumps(self._keys),
               "SIM_APNS_TOKEN_MAX_AGE": str(self._token_max_age)}
        self.port = _free_port()
        log_file = open(self._dir / "granian.log", "wb")  # the child keeps its own copy
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "1", "--blocking-threads", "1",
             "--http", "auto", "--no-ws", "--http2-max-concurrent-streams", "1000",
             "--host", "127.0.0.1", "--port", str(self.port),
             "--ssl-certificate", str(self._dir / "cert.pem"), "--ssl-keyfile", str(self._dir / "key.pem"),
             "--log-level", "warning", "--no-access-log", "simulators._apns_wsgi:app"],
            env=env, cwd=Path(__file__).resolve().parent.parent, process_group=0,
            stdout=subprocess.DEVNULL, stderr=log_file)
        log_file.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.stats()
                return self
            except OSError:
                pass
            try:  # waits POLL for the listener, and notices a Granian that exited
                code = self._proc.wait(POLL)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None or time.monotonic() > deadline:
                log = (self._dir / "granian.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the served APNs simulator did not start (exit {code}): {log}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
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
        return json.loads(self._admin("GET", "stats"))  # type: ignore[no-any-return]

    def delivered_count(self) -> int:
        """Every 200 answered, repeats included (as ApnsSimulator counts its records)."""
        stats = self.stats()
        return stats.get("delivered", 0) + stats.get("repeated", 0)

    def wait_delivered(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self.delivered_count()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"APNs (served): {seen} delivered, not {count}, within {timeout} s")
            time.sleep(POLL)  # the counts live in another process: look again

    def reset(self) -> None:
        self._admin("POST", "reset")

    def _admin(self, method: str, what: str) -> bytes:
        request = urllib.request.Request(f"{self.base_url}/__sim/{what}", method=method)
        with urllib.request.urlopen(request, context=tls.client_context(), timeout=10) as response:
            return response.read()  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
