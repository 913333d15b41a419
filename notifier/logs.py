"""Logging that never shows a secret or a whole device token.

Our own log lines show a token's last 6 characters (``model.redact``). Libraries are less
careful at DEBUG: hpack logs every header it encodes (APNs paths carry the token, the
authorization header the JWT), httpx logs URLs (FCM topic calls carry the token), and a
traceback may quote a request. So, in every process:

- those loggers are held at INFO or above whatever the root level is;
- a filter on every handler rewrites what still slips through: PEM blocks, JWTs,
  bearer and VAPID credentials, and anything shaped like a device token keep at most
  their last 6 characters.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

# Loggers that dump headers, bodies or URLs at DEBUG.
NOISY = ("hpack", "h2", "httpcore", "httpx", "urllib3", "google.auth", "google_auth_httplib2", "aiohttp.client",
         "kombu.transport", "asyncio")

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*-----.*?-----END [A-Z ]*-----", re.S), "<redacted key>"),
    (re.compile(r'"private_key"\s*:\s*"[^"]*"'), '"private_key": "<redacted>"'),
    (re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]{5,}"), "<redacted jwt>"),
    (re.compile(r"(?i)(bearer|vapid t=)\s*[\w.~+/=-]{12,}"), r"\1 <redacted>"),
    (re.compile(r"(?i)\b(ya29\.[\w.-]{10,})"), "<redacted oauth token>"),
    # APNs tokens (64+ hex), FCM registration tokens, Web Push endpoint paths
    (re.compile(r"\b[0-9a-fA-F]{58,}([0-9a-fA-F]{6})\b"), r"…\1"),
    (re.compile(r"\b[\w-]{20,}:[\w-]{60,}([\w-]{6})\b"), r"…\1"),
    (re.compile(r"(https://[^\s/\"']+/(?:push|wpush|fcm/send|v\d)/)[\w.~%-]{14,}([\w-]{6})"), r"\1…\2"),
)


def redact_text(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites the formatted message (and its traceback) of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line (``NOTIFIER_LOG_FORMAT=json``): time, level, logger, the
    (already redacted) message, a batch's fields when the line is a batch's, and the
    traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        batch = getattr(record, "batch", None)
        if isinstance(batch, dict):
            line.update(batch)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(self.formatException(record.exc_info))
        if record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, default=str)


def secure_logging(logger: logging.Logger | None = None, *, json_lines: bool = False) -> None:
    """Hold noisy loggers at INFO and put the redacting filter on every handler (and the
    JSON formatter, with ``json_lines``)."""
    for name in NOISY:
        noisy = logging.getLogger(name)
        if noisy.getEffectiveLevel() < logging.INFO:
            noisy.setLevel(logging.INFO)
    root = logger or logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
        if json_lines:
            handler.setFormatter(JsonFormatter())
