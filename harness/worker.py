"""A real Celery worker in a subprocess, for the demo, the bench and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from workers.queues import ALL_QUEUES


class WorkerProcess:
    """``celery -A workers worker`` with the given environment; logs go to ``log_path``."""

    def __init__(self, env: dict[str, str], *, queues: list[str] | None = None, concurrency: int = 2,
                 pool: str = "prefork", loglevel: str = "INFO", log_path: Path | None = None) -> None:
        self.env = env
        self.queues = queues or ALL_QUEUES
        self.concurrency = concurrency
        self.pool = pool
        self.loglevel = loglevel
        self.name = f"w{uuid.uuid4().hex[:8]}@%h"
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="notifier-worker-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", ",".join(self.queues),
             "-c", str(self.concurrency), "-P", self.pool, "-n", self.name, "-l", self.loglevel,
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
        log.close()
        return self

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and children): a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
