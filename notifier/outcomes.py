"""What a push service said about one device, as data.

Every channel's ``send`` returns one of these per device, in order. Only ``DeadToken``
ever reaches the stale-token table; the split is what keeps live tokens safe:

- ``Delivered``: the provider accepted the message.
- ``RetryAfter``: transient (throttled, 5xx, timeout, connection lost); the one retry
  policy in ``workers`` decides whether and when.
- ``DeadToken``: the provider says this token will never work again.
- ``MessageRejected``: this message is at fault (too big, bad TTL); the token is kept.
- ``CredentialFailure``: our key or certificate for ``app`` is wrong; the token is kept
  and operators must act.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int = 200
    status_name = "delivered"


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Try again later; ``seconds`` is the provider's Retry-After, or None for our backoff."""

    seconds: float | None
    reason: str
    status: int | None = None
    status_name = "retrying"


@dataclass(frozen=True, slots=True)
class DeadToken:
    """The token is gone; ``since`` is the provider's own timestamp where it gives one."""

    reason: str
    status: int | None = None
    since: datetime | None = None
    status_name = "dead"


@dataclass(frozen=True, slots=True)
class MessageRejected:
    reason: str
    status: int | None = None
    status_name = "failed"


@dataclass(frozen=True, slots=True)
class CredentialFailure:
    app: str
    reason: str
    status: int | None = None
    status_name = "failed"


Outcome = Delivered | RetryAfter | DeadToken | MessageRejected | CredentialFailure
