"""The simulator base (lifecycle, recorder, scripts, outage, wait_for), on a minimal
line-protocol simulator over plain TCP: a client sends ``target\\n`` and reads back the
status line; ``!target`` is rejected (400) before the script is looked at. Every read has
a socket timeout; nothing sleeps."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from simulators.base import SimulatorBase


@dataclass(frozen=True)
class Hit:
    target: str
    status: int | None


class LineSim(SimulatorBase[Hit, str]):
    name = "Line"
    behaviours = frozenset({"live", "fail", "silent"})
    outage_default = ("fail", {"status": 503})

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _listen(self, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    def _delivery_key(self, record: Hit) -> str | None:
        return record.target if record.status == 200 else None

    def _check_script(self, behaviour: str, params: dict[str, Any]) -> None:
        if behaviour == "fail" and not 400 <= int(params.get("status", 500)) <= 599:
            raise ValueError("a 'fail' status must be 4xx or 5xx")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                target = line.decode().strip()
                status: int | None = 400
                if not target.startswith("!"):
                    script = self._take(target)
                    status = {"live": 200, "fail": int(script.params.get("status", 500)),
                              "silent": None}[script.behaviour]
                self._record(Hit(target.lstrip("!"), status))
                if status is not None:
                    writer.write(f"{status}\n".encode())
        finally:
            self._writers.discard(writer)


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("rb")

    def ask(self, target: str) -> int:
        self.sock.sendall(f"{target}\n".encode())
        return int(self.file.readline())

    def dropped(self) -> bool:
        """The server closed or reset this connection."""
        try:
            return self.file.readline() == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def sim() -> Iterator[LineSim]:
    with LineSim() as simulator:
        yield simulator


@pytest.fixture
def client(sim: LineSim) -> Iterator[Client]:
    c = Client(sim.port)
    yield c
    c.close()


# -- lifecycle ---------------------------------------------------------------------------
def test_start_returns_self_listens_and_stop_ends_the_thread() -> None:
    sim = LineSim()
    assert not sim.running and sim.port == 0
    assert sim.start() is sim
    thread = sim._thread
    assert sim.running and sim.port != 0 and sim.base_url == f"https://127.0.0.1:{sim.port}"
    assert thread is not None and thread.daemon and thread.name == "line-sim"
    assert sim.start() is sim and sim._thread is thread  # starting again does nothing
    client = Client(sim.port)
    try:
        assert client.ask("a") == 200
    finally:
        client.close()
    sim.stop()
    assert not sim.running and not thread.is_alive()
    sim.stop()  # stopping again does nothing
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sim.port), timeout=5)


def test_context_manager_starts_and_stops() -> None:
    with LineSim() as sim:
        assert sim.running
        port = sim.port
    assert not sim.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_restart_drops_connections_and_listens_on_the_same_port(sim: LineSim, client: Client) -> None:
    sim.script("a", "fail", times=2)
    port = sim.port
    assert client.ask("a") == 500
    assert sim.restart() is sim
    assert sim.port == port and sim.running
    assert client.dropped()
    again = Client(sim.port)
    try:
        assert [again.ask("a"), again.ask("a")] == [500, 200]  # scripts survive a restart
    finally:
        again.close()
    assert [(h.target, h.status) for h in sim.records] == [("a", 500), ("a", 500), ("a", 200)]


def test_stop_then_start_keeps_records_and_the_port() -> None:
    with LineSim() as sim:
        client = Client(sim.port)
        assert client.ask("a") == 200
        client.close()
        port = sim.port
        sim.stop()
        assert len(sim.records) == 1
        sim.start()
        assert sim.port == port and len(sim.records) == 1


def test_start_on_a_taken_port_raises_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sim = LineSim(taken.getsockname()[1])
        with pytest.raises(OSError):
            sim.start()
        assert not sim.running
        assert not [t for t in threading.enumerate() if t.name == "line-sim" and t.is_alive()]


# -- scripts and outage ------------------------------------------------------------------
def test_scripts_with_times_revert_to_live(sim: LineSim, client: Client) -> None:
    sim.script("a", "fail", status=503, times=2)
    sim.script("b", "fail")
    assert [client.ask("a") for _ in range(4)] == [503, 503, 200, 200]
    assert [client.ask("b") for _ in range(2)] == [500, 500]  # until re-scripted
    sim.script("b", "live")
    assert client.ask("b") == 200
    sim.script("c", "fail", times=1)
    assert client.ask("!c") == 400  # rejected before the script: no time consumed
    assert [client.ask("c"), client.ask("c")] == [500, 200]


def test_outage_overrides_scripts_until_outage_none(sim: LineSim, client: Client) -> None:
    sim.script("a", "fail", status=404, times=1)
    sim.outage()
    assert [client.ask("a"), client.ask("b")] == [503, 503]  # outage_default
    sim.outage("fail", status=502)
    assert client.ask("b") == 502
    assert client.ask("!b") == 400  # rejections come first, as for scripts
    sim.outage(None)
    assert [client.ask("a"), client.ask("a"), client.ask("b")] == [404, 200, 200]  # not consumed


def test_script_and_outage_validation(sim: LineSim) -> None:
    with pytest.raises(ValueError, match="unknown Line behaviour 'explode'"):
        sim.script("a", "explode")
    with pytest.raises(ValueError, match="times must be >= 1"):
        sim.script("a", "fail", times=0)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        sim.script("a", "fail", status=200)
    with pytest.raises(ValueError, match="unknown Line behaviour"):
        sim.outage("explode")


# -- recorder ----------------------------------------------------------------------------
def test_records_delivered_and_counts(sim: LineSim, client: Client) -> None:
    sim.script("dead", "fail", status=410)
    for target in ("a", "b", "a", "dead", "!a"):
        client.ask(target)
    assert [(h.target, h.status) for h in sim.records] == [
        ("a", 200), ("b", 200), ("a", 200), ("dead", 410), ("a", 400)]
    assert [h.target for h in sim.delivered()] == ["a", "b", "a"]
    assert sim.deliveries_by_token() == {"a": 2, "b": 1}
    assert (sim.delivered_count("a"), sim.delivered_count("dead"), sim.delivered_count()) == (2, 0, 3)
    sim.records.clear()  # a copy
    sim.deliveries_by_token().clear()
    assert len(sim.records) == 5 and sim.deliveries_by_token() == {"a": 2, "b": 1}


def test_a_replaced_record_moves_the_counts(sim: LineSim, client: Client) -> None:
    client.ask("a")
    sim._replace(0, Hit("a", 0))  # e.g. FCM: the connection was cut before the answer
    assert sim.deliveries_by_token() == {} and sim.delivered_count() == 0
    assert sim.records == [Hit("a", 0)]


def test_reset_clears_records_scripts_and_outage(sim: LineSim, client: Client) -> None:
    sim.script("a", "fail")
    client.ask("a")
    client.ask("b")
    sim.outage()
    sim.reset()
    assert sim.records == [] and sim.delivered_count() == 0 and sim.deliveries_by_token() == {}
    assert [client.ask("a"), client.ask("b")] == [200, 200]


# -- wait_for ------------------------------------------------------------------------------
def test_wait_for_wakes_on_records_from_the_loop_thread(sim: LineSim) -> None:
    errors: list[BaseException] = []

    def send() -> None:
        c = Client(sim.port)
        try:
            for i in range(200):
                c.ask(f"t{i % 7}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            c.close()

    sender = threading.Thread(target=send)
    started = time.monotonic()
    sender.start()
    try:
        snapshot = sim.wait_for(lambda records: len(records) == 200, timeout=30)
    finally:
        sender.join()
    # woken by the records, not by the timeout (a lost wake-up returns only after 30 s)
    assert time.monotonic() - started < 30
    assert not errors and len(snapshot) == 200 and sum(sim.deliveries_by_token().values()) == 200


def test_wait_for_returns_at_once_and_passes_a_read_only_view(sim: LineSim, client: Client) -> None:
    client.ask("a")
    client.ask("b")
    seen: list[Sequence[Hit]] = []

    def predicate(records: Sequence[Hit]) -> bool:
        seen.append(records)
        return records[0].target == "a" and records[-1:] == [Hit("b", 200)] and len(records) == 2

    assert sim.wait_for(predicate, timeout=0) == [Hit("a", 200), Hit("b", 200)]
    assert not isinstance(seen[0], list) and not hasattr(seen[0], "append")


def test_wait_for_times_out_with_a_clear_message(sim: LineSim, client: Client) -> None:
    sim.script("a", "silent")
    sim.outage()
    client.ask("b")
    sim.outage(None)
    client.sock.sendall(b"a\n")  # never answered
    sim.wait_for(lambda records: len(records) == 2, timeout=5)
    with pytest.raises(TimeoutError) as info:
        sim.wait_for(lambda records: len(records) > 2, timeout=0.05)
    assert str(info.value) == ("Line simulator: predicate still false after 0.05s; 2 record(s), "
                               "by status {503: 1, None: 1}, last [503, None]")
