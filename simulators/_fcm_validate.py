"""Parsing of, and the server-side checks FCM HTTP v1 applies to, a ``messages:send`` body.

Reference: https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages
Error messages name the offending field and never echo a registration token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_DATA_BYTES = 4096
TOPIC_RE = re.compile(r"^[a-zA-Z0-9\-_.~%]+$")
BODY_FIELDS = frozenset({"message", "validate_only"})
MESSAGE_FIELDS = frozenset(
    {
        "name", "data", "notification", "android", "webpush", "apns", "fcm_options",
        "fcmOptions", "token", "fid", "topic", "condition",
    }
)
TARGETS = ("token", "fid", "topic", "condition")  # "fid": firebase-admin 7.7 Message(fid=)


class Invalid(Exception):
    """A 400 INVALID_ARGUMENT: ``field`` is the request field at fault (or None)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.")
    return body


@dataclass(frozen=True)
class ParsedSend:
    """A ``messages:send`` body as parsed, before any check."""

    body: dict[str, Any]
    problem: Invalid | None  # unparseable
    message: dict[str, Any]
    fields: dict[str, str | None]  # the four recipient fields, when strings
    kind: str | None  # which recipient field is set first
    validate_only: bool

    @property
    def token(self) -> str | None:
        return self.fields["token"] or self.fields["fid"]

    @classmethod
    def parse(cls, raw: bytes) -> ParsedSend:
        body: dict[str, Any] = {}
        problem: Invalid | None = None
        try:
            body = parse_body(raw)
        except Invalid as exc:
            problem = exc
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        fields = {k: message[k] if isinstance(message.get(k), str) else None for k in TARGETS}
        kind = next((k for k, v in fields.items() if v is not None), None)
        return cls(body, problem, message, fields, kind, body.get("validate_only") is True)


def check_send(body: dict[str, Any]) -> None:
    """Raise :class:`Invalid` unless ``body`` is an acceptable ``messages:send`` request."""
    for name in body:
        if name not in BODY_FIELDS:
            raise Invalid(
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.', name
            )
    if not isinstance(body.get("validate_only", False), bool):
        raise Invalid("Invalid value at 'validate_only' (TYPE_BOOL)", "validate_only")
    message = body.get("message")
    if not isinstance(message, dict):
        raise Invalid("Invalid value at 'message': not an object.", "message")
    for name in message:
        if name not in MESSAGE_FIELDS:
            raise Invalid(
                f'Invalid JSON payload received. Unknown name "{name}" at \'message\': '
                "Cannot find field.",
                f"message.{name}",
            )
    targets = [name for name in TARGETS if name in message]
    if not targets:
        raise Invalid("Recipient of the message is not set.", "message")
    if len(targets) > 1:
        raise Invalid(
            f"Invalid value at 'message' (oneof), oneof field 'target' is already set. "
            f"Cannot set '{targets[1]}'",
            f"message.{targets[1]}",
        )
    target = targets[0]
    value = message[target]
    if not isinstance(value, str) or not value:
        raise Invalid(f"Invalid value at 'message.{target}' (TYPE_STRING)", f"message.{target}")
    if target == "topic" and not TOPIC_RE.match(topic_name(value)):
        raise Invalid("Invalid value at 'message.topic': malformed topic name", "message.topic")
    for name in ("notification", "android", "webpush", "apns", "fcm_options", "fcmOptions"):
        if name in message and not isinstance(message[name], dict):
            raise Invalid(f"Invalid value at 'message.{name}' (TYPE_MESSAGE)", f"message.{name}")
    _check_data(message.get("data"))


def _check_data(data: Any) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise Invalid("Invalid value at 'message.data' (map<string, string>)", "message.data")
    size = 0
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            raise Invalid(
                f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), "
                f"{json.dumps(value)[:64]}",
                f"message.data[{index}].value",
            )
        size += len(key.encode()) + len(value.encode())
    if size > MAX_DATA_BYTES:
        raise Invalid(
            f"Message is too big: data payload is {size} bytes, the limit is {MAX_DATA_BYTES}",
            "message.data",
        )


def topic_name(topic: str) -> str:
    return topic[len("/topics/"):] if topic.startswith("/topics/") else topic
