"""What a push service said about one device, as data.

Every channel's ``send`` returns one of these per device, in order. What each one does
to the delivery row and to the token is decided in one place, ``feedback.FEEDBACK``:

- ``Delivered``: the provider accepted the message.
- ``RetryAfter``: transient (throttled, 5xx, timeout, connection lost); the one retry
  policy in ``workers`` decides whether and when.
- ``DeadToken``: the provider says this token will never work again.
- ``TokenMismatch``: the provider says the token belongs to another app, project or
  environment than the one we sent as. Either the token is wrong or our configuration
  is (a wrong bundle id, a wrong Firebase project): the token is held, not removed.
- ``MessageRejected``: this message is at fault (too big, bad TTL); the token is kept.
- ``CredentialFailure``: our key or certificate for ``app`` is wrong; the token is kept
  and operators must act.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int = 200


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Try again later; ``seconds`` is the provider's Retry-After, or None for our backoff."""

    seconds: float | None
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class DeadToken:
    """The token is gone; ``since`` is the provider's own timestamp where it gives one."""

    reason: str
    status: int | None = None
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class TokenMismatch:
    """The token is not for the app, project or environment we sent as: held, and alerted."""

    app: str
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class MessageRejected:
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class CredentialFailure:
    app: str
    reason: str
    status: int | None = None


Outcome = Delivered | RetryAfter | DeadToken | TokenMismatch | MessageRejected | CredentialFailure


def every(outcome: Outcome, devices: Sized) -> list[Outcome]:
    """The same outcome for each device of a batch (a batch-wide answer or fault)."""
    return [outcome] * len(devices)
