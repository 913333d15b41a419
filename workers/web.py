"""The HTTP API (``notifier serve``): notifier for services that are not Python, and for
browsers. The same boundary as the Python API: every body goes through
``register_device`` / ``prepare_notify``, so the same checks refuse the same input, with
the same sentence (422). Sends are enqueued with ``workers.notify``.

Auth: ``Authorization: Bearer TOKEN``, a token of one app (``notifier api-token create``),
stored hashed. Scope ``send`` may do everything for its app; scope ``register`` only
registers and unregisters devices, so it can sit in a web page (the subscribe page at
``/``, with its service worker at ``/sw.js``). Bodies over ``MAX_BODY`` are refused (413)
before they are read whole.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives import serialization
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notifier.api import cancel, default_store, register_device, unregister_device
from notifier.checks import check_notification_id
from notifier.config import Settings
from notifier.errors import InvalidNotification
from notifier.store.access import proves
from notifier.webpush import read_vapid_key
from workers.tasks import notify

MAX_BODY = 64 * 1024  # a notification's data fits 4 KB on every provider; a user list of 1,000 ids fits easily
Platform = Literal["apns", "fcm", "webpush"]


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(description="your user id")
    user_proof: str | None = Field(None, description="with a register token: HMAC-SHA256(signing secret, user), "
                                                     "hex, computed by your backend for its logged-in user")
    platform: Platform
    token: str | dict[str, Any] = Field(description="APNs hex token, FCM registration token, or the browser's "
                                                    "PushSubscription (object or its JSON)")


class DeviceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Platform
    token: str | dict[str, Any]


class Registered(BaseModel):
    device_id: int


class Unregistered(BaseModel):
    removed: bool


class NotificationIn(BaseModel):
    """Exactly one audience (``users``, ``topic``, ``everyone``, ``fcm_topic``,
    ``fcm_condition``) and the notification's fields, as ``notify.delay`` takes them."""

    model_config = ConfigDict(extra="forbid")
    users: list[str] | None = Field(None, max_length=1000)
    topic: str | None = None
    everyone: bool | Platform | None = None
    fcm_topic: str | None = None
    fcm_condition: str | None = None
    title: str | None = None
    body: str | None = None
    data: dict[str, Any] | None = None
    badge: int | None = None
    sound: str | None = None
    silent: bool | None = None
    ttl: int | None = None
    collapse_key: str | None = None
    priority: Literal["high", "normal"] | None = None
    category: str | None = None
    send_at: str | None = Field(None, description="ISO 8601 instant with offset; a local date-time or HH:MM "
                                                  "(each user's time zone)")
    idempotency_key: str | None = None
    thread_id: str | None = None
    android_channel_id: str | None = None


class Accepted(BaseModel):
    id: str


class Cancelled(BaseModel):
    id: str
    before_release: bool
    cancelled: int


class Problem(BaseModel):
    error: str


class VapidKey(BaseModel):
    public_key: str = Field(description="the app's VAPID public key, base64url: PushManager's applicationServerKey")


class Caller(BaseModel):
    app: str
    scope: str
    signing_secret: bytes | None = None

    def may_register_for(self, user: str, proof: str | None) -> bool:
        if self.scope == "send":
            return True
        return self.signing_secret is not None and proof is not None and proves(self.signing_secret, user, proof)


_bearer = HTTPBearer(auto_error=False)


def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    found = default_store().api_token(credentials.credentials) if credentials else None
    if found is None:
        raise HTTPException(401, "a valid bearer token is needed (notifier api-token create APP)",
                            headers={"WWW-Authenticate": "Bearer"})
    return Caller(app=found[0], scope=found[1], signing_secret=found[2])


def sender(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if who.scope != "send":
        raise HTTPException(403, "this token may only register devices")
    return who


Registrar = Annotated[Caller, Depends(caller)]
Sender = Annotated[Caller, Depends(sender)]
REFUSED: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 403: {"model": Problem},
                                            413: {"model": Problem}, 422: {"model": Problem}}


def create_app() -> FastAPI:
    api = FastAPI(title="notifier", version="1", description=__doc__, responses=REFUSED)
    api.add_middleware(BodyLimit, limit=MAX_BODY)

    @api.exception_handler(InvalidNotification)
    async def invalid(request: Request, exc: InvalidNotification) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @api.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @api.post("/v1/devices", status_code=201)
    def register(device: Device, who: Registrar) -> Registered:
        """Register a device (or a Web Push subscription) for a user; a known token moves to that user.
        A register token needs ``user_proof`` for that user."""
        _check_proof(who, device)
        return Registered(device_id=register_device(who.app, device.user, device.platform, device.token))

    @api.post("/v1/devices/unregister")
    def unregister(device: DeviceRef, who: Registrar) -> Unregistered:
        return Unregistered(removed=unregister_device(who.app, device.platform, device.token))

    @api.post("/v1/notifications", status_code=202)
    def send(n: NotificationIn, who: Sender) -> Accepted:
        """Enqueue a notification (or schedule it, with ``send_at``): its id for status and cancel."""
        return Accepted(id=notify.delay(who.app, **n.model_dump(exclude_none=True)).id)

    @api.get("/v1/notifications/{notification_id}")
    def status(notification_id: str, who: Sender) -> dict[str, Any]:
        """Counts by outcome, the failed devices and a critical notification's fallbacks."""
        st = _own(notification_id, who)
        out = asdict(st)
        out.update(created_at=st.created_at.isoformat(), settled=st.settled)
        return out

    @api.post("/v1/notifications/{notification_id}/cancel")
    def cancel_notification(notification_id: str, who: Sender) -> Cancelled:
        _own(notification_id, who)
        before, rows = cancel(notification_id)
        return Cancelled(id=notification_id, before_release=before, cancelled=rows)

    @api.get("/v1/webpush/vapid-public-key")
    def vapid_public_key(who: Registrar) -> VapidKey:
        cfg = Settings.current().apps.get(who.app)
        if cfg is None or cfg.webpush is None:
            raise HTTPException(404, f"app {who.app!r} has no webpush credentials")
        key = read_vapid_key(cfg.webpush.vapid_private_key_file)
        raw = key.public_key.public_bytes(*_UNCOMPRESSED)
        return VapidKey(public_key=base64.urlsafe_b64encode(raw).decode().rstrip("="))

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _static("subscribe.html")

    @api.get("/sw.js", include_in_schema=False)
    def service_worker() -> Response:
        return Response(_static("sw.js"), media_type="text/javascript", headers={"Service-Worker-Allowed": "/"})

    return api


def _check_proof(who: Caller, device: Device) -> None:
    if not who.may_register_for(device.user, device.user_proof):
        raise HTTPException(403, "a register token needs user_proof: HMAC-SHA256(signing secret, user), "
                                 "from your backend")


def _own(notification_id: str, who: Caller) -> Any:
    st = default_store().status(check_notification_id(notification_id))
    if st is None or st.app != who.app:
        raise HTTPException(404, f"no notification {notification_id}")
    return st


def _static(name: str) -> str:
    return resources.files("workers").joinpath("static", name).read_text()


_UNCOMPRESSED = (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def openapi_document() -> str:
    """The OpenAPI document, as committed in ``workers/openapi.json``."""
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


class BodyLimit:
    """413 for a body over ``limit`` bytes: by Content-Length before reading, or while a
    chunked body streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(send, self.limit)
            return
        seen, refused = 0, False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # answer now; the app sees the client gone and its answer is dropped
                refused = True
                await _too_large(send, self.limit)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded)


async def _too_large(send: Callable[[Message], Awaitable[None]], limit: int) -> None:
    body = json.dumps({"error": f"the body is over {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
