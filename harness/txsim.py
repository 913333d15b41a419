"""The APNs simulator that the bench's one-user notifications go to, in a process of its
own: Apple's servers are not in the process of the simulators a broadcast keeps busy,
whose threads would make a receipt wait for their interpreter lock.

``python -m harness.txsim TEAM KEY_ID PUBLIC_KEY_FILE`` prints its base URL and the file
of its certificate authority (each process has its own), then one line per request it
accepts: the time it arrived (epoch seconds). It stops when its standard
input closes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from simulators.apns import ApnsSimulator
from simulators.tls import ca_path


def main() -> None:
    team, key_id, public = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_text()
    with ApnsSimulator(team, {key_id: public}) as sim:
        print(sim.base_url, ca_path(), flush=True)
        seen = 0
        threading.Thread(target=lambda: (sys.stdin.read(), sim.stop()), daemon=True).start()
        while sim.running:
            try:
                records = sim.wait_for(lambda recs, seen=seen: len(recs) > seen, timeout=1.0)
            except TimeoutError:
                continue
            for record in records[seen:]:
                print(record.received_at, flush=True)
            seen = len(records)


class TxSimulator:
    """The bench's side: starts ``main`` in a subprocess and collects its receipts."""

    def __init__(self, team: str, key_id: str, public_key_file: Path) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "harness.txsim", team, key_id, str(public_key_file)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      cwd=Path(__file__).resolve().parent.parent,
                                      start_new_session=True)  # not in the bench's niced CPU group
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline().split()
        if len(first) != 2 or not first[0].startswith("https://"):
            raise RuntimeError("the transactional APNs simulator did not start")
        self.base_url, self.ca_file = first[0], Path(first[1])
        self.received: list[float] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="txsim-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self.received.append(float(line))
                self._cond.notify_all()

    def wait_for_receipt(self, index: int, timeout: float) -> float:
        """The arrival time of the ``index``-th request (from 0), once it has arrived."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) > index, timeout):
                raise TimeoutError(f"the transactional simulator received {len(self.received)} requests, "
                                   f"not {index + 1}, within {timeout} s")
            return self.received[index]

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


if __name__ == "__main__":
    main()
