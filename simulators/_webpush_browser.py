"""The push service's other side: the WebSocket a real Firefox keeps open to it.

Firefox speaks Mozilla's push protocol (autopush's; ``dom.push.serverURL``) to its push
service: ``hello`` (the user agent id), ``register`` (a channel per subscription; the
answer carries the endpoint application servers POST to), ``unregister``, and, from the
service, ``notification`` (the encrypted body, base64url, with its encoding), which the
browser decrypts, hands to the service worker and ``ack``-s. A browser's subscription
keys never leave the browser, so the service relays its pushes without reading them.

    ws://127.0.0.1:WS_PORT/   (Firefox: dom.push.serverURL, with
                               dom.push.testing.allowInsecureServerURL = true)
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)


@dataclass
class BrowserChannel:
    uaid: str
    channel_id: str
    sub_id: str
    unsubscribed: bool = False
    acks: list[str] = field(default_factory=list)  # versions (message ids) the browser acknowledged


class BrowserSide:
    """Connected browsers by user agent id, their channels, and messages waiting for them."""

    def __init__(self, new_subscription: Callable[[bytes | None], tuple[str, str]]) -> None:
        # new_subscription(applicationServerKey or None) -> (subscription id, endpoint URL)
        self._new_subscription = new_subscription
        self.channels: dict[str, BrowserChannel] = {}  # by subscription id
        self._sockets: dict[str, web.WebSocketResponse] = {}  # by uaid
        self._waiting: dict[str, list[dict[str, Any]]] = {}  # by uaid: while the browser is away

    def channel(self, sub_id: str) -> BrowserChannel | None:
        return self.channels.get(sub_id)

    async def deliver(self, sub_id: str, message_id: str, body: bytes, encoding: str) -> None:
        ch = self.channels[sub_id]
        frame = {"messageType": "notification", "channelID": ch.channel_id, "version": message_id,
                 "data": base64.urlsafe_b64encode(body).decode().rstrip("="), "headers": {"encoding": encoding}}
        ws = self._sockets.get(ch.uaid)
        if ws is None or ws.closed:
            self._waiting.setdefault(ch.uaid, []).append(frame)
        else:
            await ws.send_str(json.dumps(frame))

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("push-notification",))
        await ws.prepare(request)
        uaid: str | None = None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
            except ValueError:
                break
            if frame == {}:  # a ping
                await ws.send_str("{}")
                continue
            kind = frame.get("messageType")
            if kind == "hello":
                uaid = frame.get("uaid") or secrets.token_hex(16)
                self._sockets[uaid] = ws
                await ws.send_str(json.dumps({"messageType": "hello", "status": 200, "uaid": uaid,
                                              "use_webpush": True, "broadcasts": {}}))
                for waiting in self._waiting.pop(uaid, []):
                    await ws.send_str(json.dumps(waiting))
            elif kind == "register" and uaid is not None:
                await ws.send_str(json.dumps(self._register(uaid, frame)))
            elif kind == "unregister":
                for ch in self.channels.values():
                    if ch.channel_id == frame.get("channelID") and ch.uaid == uaid:
                        ch.unsubscribed = True
                await ws.send_str(json.dumps({"messageType": "unregister", "channelID": frame.get("channelID"),
                                              "status": 200}))
            elif kind == "ack":
                for update in frame.get("updates", []):
                    for ch in self.channels.values():
                        if ch.channel_id == update.get("channelID") and ch.uaid == uaid:
                            ch.acks.append(str(update.get("version")))
            else:
                log.debug("browser side: ignored %s", kind)
        if uaid is not None and self._sockets.get(uaid) is ws:
            del self._sockets[uaid]
        return ws

    def _register(self, uaid: str, frame: dict[str, Any]) -> dict[str, Any]:
        key = frame.get("key")
        server_key = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)) if isinstance(key, str) and key else None
        sub_id, endpoint = self._new_subscription(server_key)
        channel_id = str(frame.get("channelID"))
        self.channels[sub_id] = BrowserChannel(uaid, channel_id, sub_id)
        return {"messageType": "register", "channelID": channel_id, "status": 200, "pushEndpoint": endpoint}

    async def close(self) -> None:
        for ws in list(self._sockets.values()):
            await ws.close()
        self._sockets.clear()
