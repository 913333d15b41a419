"""A real Celery worker, and a real beat, each in a subprocess, for the demo, the bench and
the tests. Each runs in a session of its own, so ``kill()`` takes a whole worker down,
parent and pool processes, as a host loss or an OOM kill would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from workers.queues import ALL_QUEUES

ROOT = Path(__file__).resolve().parent.parent


class _Process:
    def __init__(self, env: dict[str, str], log_path: Path | None, prefix: str) -> None:
        self.env = env
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=prefix, suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env={**os.environ, **self.env}, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        return self

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process and every process it started: a crash, not a shutdown."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> _Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess(_Process):
    """``celery -A workers worker`` with the given environment; logs go to ``log_path``."""

    def __init__(self, env: dict[str, str], *, queues: list[str] | None = None, concurrency: int = 2,
                 pool: str = "prefork", loglevel: str = "INFO", log_path: Path | None = None,
                 include: list[str] | None = None, app: str = "workers", nice: int = 0) -> None:
        """``include``: more modules for the worker to import (``-I``), such as a test's fault drill;
        ``app``: the Celery app (``-A``), ours unless the bench runs its baseline; ``nice``: as
        the Procfile's ``nice -n`` (a lower CPU priority)."""
        super().__init__(env, log_path, "notifier-worker-")
        self.include = include or []
        self.queues = queues or ALL_QUEUES
        self.concurrency = concurrency
        self.pool = pool
        self.loglevel = loglevel
        self.name = f"w{uuid.uuid4().hex[:8]}@%h"
        self.app = app
        self.nice = nice

    def command(self) -> list[str]:
        return [*(["nice", "-n", str(self.nice)] if self.nice else []),
                sys.executable, "-m", "celery", "-A", self.app, "worker", "-Q", ",".join(self.queues),
                "-c", str(self.concurrency), "-P", self.pool, "-n", self.name, "-l", self.loglevel,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                *(["-I", ",".join(self.include)] if self.include else [])]

    def start(self) -> WorkerProcess:
        super().start()
        return self


class BeatProcess(_Process):
    """``celery -A workers beat``, as the Procfile's beat: retries and recovery wait for the
    ``resume_owed`` it schedules."""

    def __init__(self, env: dict[str, str], *, log_path: Path | None = None) -> None:
        super().__init__(env, log_path, "notifier-beat-")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "workers", "beat", "-l", "INFO",
                "-s", str(self.log_path.with_suffix(".schedule"))]

    def start(self) -> BeatProcess:
        super().start()
        return self


class ExporterProcess(_Process):
    """``python -m workers.exporter``, as the Procfile's exporter: ``/metrics`` on ``port``."""

    def __init__(self, env: dict[str, str], port: int, *, log_path: Path | None = None) -> None:
        super().__init__(env, log_path, "notifier-exporter-")
        self.port = port
        self.url = f"http://127.0.0.1:{port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "workers.exporter", "--port", str(self.port)]

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample served, keyed by name and sorted labels; raises OSError until it answers."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url, timeout=5) as resp:
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def start(self) -> ExporterProcess:
        super().start()
        return self
