"""The libraries we patch still have what the patches reach for.

``notifier/apns_protocol.py`` and ``notifier/apns.py`` override aioapns hooks and read its
private state; ``notifier/fcm.py`` configures firebase-admin through private names.
pyproject.toml pins both to the versions those patches were written for. When an upgrade
renames a hook, an override of it is silently never called (the defect it fixes comes
back): this test fails first, naming what is gone.
"""

from __future__ import annotations

import ast
import asyncio
import inspect

import pytest
from aioapns.connection import APNsBaseConnectionPool, APNsTLSClientProtocol, ChannelPool
from h2.connection import H2Connection
from hyperframe.frame import Frame

from notifier import apns, apns_protocol, fcm


def _overrides(ours: type, base: type) -> list[str]:
    """Names our subclass defines that are meant to replace the library's."""
    own = {name for name, value in vars(ours).items()
           if callable(value) or isinstance(value, property)} - {"__init__", "__module__", "__doc__"}
    helpers = {"on_stream_opened", "on_stream_reset", "_stop_timer", "_expire", "_resolve", "_abandon", "_wake",
               "_flush_now", "destroy", "_create_connection", "bound", "STREAM_TIMEOUT", "MAX_CLOSED_STREAMS"}
    return sorted(own - helpers)


@pytest.mark.parametrize("ours, base", [
    (apns_protocol.HardenedProtocol, APNsTLSClientProtocol),
    (apns_protocol._StreamSlots, ChannelPool),
    (apns_protocol._AckingH2Connection, H2Connection),
    (apns._PoolFixes, APNsBaseConnectionPool),
])
def test_every_aioapns_hook_we_override_still_exists(ours: type, base: type) -> None:
    missing = [name for name in _overrides(ours, base) if not hasattr(base, name)]
    assert not missing, f"{base.__module__}.{base.__name__} no longer has {missing}: re-check the patch"


def test_the_private_state_we_read_is_still_there() -> None:
    slots = ChannelPool(10)
    assert {"_bound_value", "_stream_id"} <= set(vars(slots))
    loop = asyncio.new_event_loop()
    try:
        protocol = APNsTLSClientProtocol("topic", loop=loop)
        assert {"requests", "request_streams", "request_statuses", "conn", "free_channels", "loop"} <= set(
            vars(protocol))
        pool = inspect.getsource(APNsBaseConnectionPool.__init__)
        for name in ("self.connections", "self._lock", "self.max_connections", "self.protocol_class",
                     "self.ssl_context", "self.loop"):
            assert name in pool, f"aioapns's pool no longer sets {name}"
    finally:
        loop.close()
    assert "create_connection" in vars(APNsBaseConnectionPool)


@pytest.mark.parametrize("owner, name", fcm.PRIVATE_NAMES)
def test_every_firebase_admin_private_name_is_still_there(owner: object, name: str) -> None:
    assert hasattr(owner, name), f"firebase-admin no longer has {owner!r}.{name}: re-check notifier/fcm.py"


def test_the_messaging_service_still_has_what_we_configure() -> None:
    init = inspect.getsource(fcm.messaging._MessagingService.__init__)
    for name in ("self._fcm_url", "self._fcm_topic_url", "self._credential", "self._async_client"):
        assert name in init, f"firebase-admin's messaging service no longer sets {name}"
    client = inspect.signature(fcm._http_client.HttpxAsyncClient.__init__).parameters
    assert {"credential", "timeout", "http2", "retry_config"} <= set(client)
    assert "auth=GoogleAuthCredentialFlow(" in inspect.getsource(fcm._http_client.HttpxAsyncClient.__init__)
    flow = inspect.getsource(fcm._http_client.GoogleAuthCredentialFlow)
    assert "self._refresh_status_codes" in flow and "in self._refresh_status_codes" in flow


def _parse(source: str) -> ast.Module:
    """ast.parse, once more if it fails spuriously: on CPython 3.11 the AST converter's
    recursion counter is shared between threads (gh-106905), and a session simulator's
    thread formatting a traceback (which parses the failing line) at the same moment made
    it raise "AST constructor recursion depth mismatch" here once."""
    for attempt in (1, 2, 3):
        try:
            return ast.parse(source)
        except SystemError:
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


def test_the_declared_dependencies_are_what_the_code_imports() -> None:
    """Every third-party import of notifier/ and workers/ is declared, and every declared
    dependency is imported."""
    import ast
    import re
    import sys
    import tomllib
    from importlib.metadata import packages_distributions
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    imported: set[str] = set()
    for path in [*root.glob("notifier/**/*.py"), *root.glob("workers/*.py"), root / "beat_schedule.py"]:
        for node in ast.walk(_parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"notifier", "workers", "beat_schedule", "harness"}
    dists = packages_distributions()
    namespaces = {"google": ["google-auth"]}  # google.* is shared by many distributions; we import google.auth
    used = {dist.lower().replace("_", "-") for module in third_party for dist in namespaces.get(module) or dists.get(module, [module])}
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    assert used - declared == set(), "imported but not declared"
    assert declared - used == set(), "declared but never imported"


class _Wire(asyncio.Transport):
    """A transport that keeps what is written to it, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def _frames(data: bytes) -> list[tuple[str, int]]:
    view, frames = memoryview(data), []
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frames.append((type(frame).__name__, frame.stream_id))
        view = view[9 + length:]
    return frames


def test_requests_are_written_sixteen_at_a_time_and_the_rest_on_the_next_pass() -> None:
    """(h): aioapns writes after each request; the hardened protocol every 16, and the
    requests left over when the loop's pass ends on its next."""
    async def main() -> list[list[tuple[str, int]]]:
        protocol = apns_protocol.protocol_for("127.0.0.1", 1, 10.0)("topic", loop=asyncio.get_running_loop())
        wire = _Wire()
        protocol.connection_made(wire)
        await asyncio.sleep(0)
        wire.writes.clear()
        for stream_id in range(1, 2 * 19, 2):  # 19 requests
            protocol.conn.send_headers(stream_id, [(":method", "POST"), (":scheme", "https"),
                                                   (":path", f"/3/device/{stream_id}"), (":authority", "x")])
            protocol.flush()
        assert len(wire.writes) == 1  # the first sixteen; three wait for the pass to end
        await asyncio.sleep(0)
        return [_frames(w) for w in wire.writes]

    first, rest = asyncio.run(main())
    assert first == [("HeadersFrame", i) for i in range(1, 32, 2)]
    assert rest == [("HeadersFrame", i) for i in (33, 35, 37)]
