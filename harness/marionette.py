"""A Firefox driven over its own Marionette port: the few WebDriver commands the browser
test needs, without geckodriver (Debian packages none) and without marionette-driver
(it needs ``telnetlib``, gone from Python 3.13).

The protocol (Firefox's remote/marionette): over TCP, each message is ``LENGTH:JSON``;
the server opens with ``{"marionetteProtocol": 3, ...}``; a command is
``[0, id, "WebDriver:Name", params]`` and its answer ``[1, id, error, result]``.
"""

from __future__ import annotations

import json
import socket
from typing import Any


class MarionetteError(Exception):
    pass


class Marionette:
    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        self._id = 0
        hello = self._read()
        if not isinstance(hello, dict) or hello.get("marionetteProtocol") != 3:
            raise MarionetteError(f"not a Marionette server: {hello!r}")

    def _read(self) -> Any:
        while b":" not in self._buffer:
            self._fill()
        length, _, rest = self._buffer.partition(b":")
        self._buffer = rest
        while len(self._buffer) < int(length):
            self._fill()
        data, self._buffer = self._buffer[:int(length)], self._buffer[int(length):]
        return json.loads(data)

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise MarionetteError("Firefox closed the Marionette connection")
        self._buffer += chunk

    def command(self, name: str, params: dict[str, Any] | None = None) -> Any:
        self._id += 1
        data = json.dumps([0, self._id, name, params or {}]).encode()
        self._sock.sendall(str(len(data)).encode() + b":" + data)
        while True:
            kind, msg_id, error, result = self._read()
            if kind == 1 and msg_id == self._id:
                break
        if error:
            raise MarionetteError(f"{name}: {error.get('error')}: {error.get('message')}")
        return result.get("value") if isinstance(result, dict) and "value" in result else result

    def start_session(self) -> None:
        self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})

    def navigate(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def execute_script(self, script: str, args: list[Any] | None = None) -> Any:
        return self.command("WebDriver:ExecuteScript", {"script": script, "args": args or []})

    def execute_async_script(self, script: str, args: list[Any] | None = None, script_timeout: int = 30_000) -> Any:
        self.command("WebDriver:SetTimeouts", {"script": script_timeout})
        return self.command("WebDriver:ExecuteAsyncScript", {"script": script, "args": args or []})

    def close(self) -> None:
        try:
            self.command("WebDriver:DeleteSession")
        except (MarionetteError, OSError):
            pass
        self._sock.close()
