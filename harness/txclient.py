"""The application that sends the bench's one-user notifications, in a process and a
session of its own, as an application is: it shares neither an interpreter lock nor (with
the kernel's autogroup scheduling, which shares the CPU between sessions first) a CPU
share with the push services. Called from the bench's process, whose threads run the
broadcast's simulators, one call took 2.3 ms idle and 6.8 ms (p99 27 ms) during a
broadcast, waiting for both.

``python -m harness.txclient APP`` reads one user id per line from standard input,
sends that user a notification and prints the time ``notify.delay()`` was called (epoch
seconds) and the notification's id. It stops when its standard input closes.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time

# Seconds the bench waits for the client to start, or to have sent one notification.
ANSWER_WITHIN = 60.0


def main() -> None:
    from workers import notify

    app = sys.argv[1]
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.time()
        result = notify.delay(app, [line.strip()], title="Your sign-in code", body="314159")
        print(start, result.id, flush=True)


class TxClient:
    """The bench's side: one notification at a time, its ``notify.delay()`` time returned."""

    def __init__(self, app: str) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "harness.txclient", app], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            if self._read() != "ready":
                raise RuntimeError("the bench's notifying client did not start")
        except BaseException:
            self.close()
            raise

    def _read(self) -> str:
        """One line of the client's, within ``ANSWER_WITHIN`` seconds (it writes one a request)."""
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], ANSWER_WITHIN)
        line = self._proc.stdout.readline() if ready else ""
        if not line and not ready:
            raise RuntimeError(f"the bench's notifying client answered nothing within {ANSWER_WITHIN:g} s")
        if not line:
            raise RuntimeError(f"the bench's notifying client stopped (exit {self._proc.wait(1)})")
        return line.strip()

    def notify(self, user: str) -> tuple[float, str]:
        """The time ``notify.delay()`` was called, and the notification's id."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(user + "\n")
        self._proc.stdin.flush()
        start, nid = self._read().split()
        return float(start), nid

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


if __name__ == "__main__":
    main()
