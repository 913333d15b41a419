"""What a provider's answer does: to the delivery row, to the token, to the operators.

Channels map each provider's codes to a ``Kind`` in their own tables (``apns.REASONS``,
``fcm.ERRORS``, ``webpush.STATUS_TABLE``); ``outcome`` turns a kind into the outcome;
``FEEDBACK`` says for every outcome, exhaustively, what it does. The retry decision
(``workers.retry``), the store (``Store.record``) and the FCM topic task all read it here
and nowhere else.

The rule for ambiguity: a verdict that can be our own misconfiguration never deletes a
token. APNs ``DeviceTokenNotForTopic`` (our bundle id may be wrong) and FCM
``SENDER_ID_MISMATCH`` (our Firebase project may be wrong) are ``TokenMismatch``: the
token is held (suppressed, removed only when an operator confirms) and an operator is
alerted, as for a credential failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import NamedTuple, assert_never

from notifier.model import Device
from notifier.outcomes import (
    CredentialFailure,
    DeadToken,
    Delivered,
    MessageRejected,
    Outcome,
    RetryAfter,
    TokenMismatch,
)


class Kind(Enum):
    """What a provider's code means, as the channels' tables say it."""

    DELIVERED = "delivered"
    RETRY = "retry"  # transient: throttled, 5xx, timeout
    DEAD = "dead"  # the token will never work again
    MISMATCH = "mismatch"  # the token is for another app/project/environment: ours or its fault
    REJECTED = "rejected"  # this message is at fault
    CREDENTIAL = "credential"  # our key, certificate or service account is at fault


class TokenEffect(StrEnum):
    KEEP = "keep"  # nothing happens to the token
    DEAD = "dead"  # suppressed now; the sweep removes it unless it is registered again
    HOLD = "hold"  # suppressed for a day, then tested again; removed only when it repeats (sweep.PROMOTE_HELD)


@dataclass(frozen=True, slots=True)
class Feedback:
    status: str  # the delivery row's status (a retry past the attempt limit becomes "failed")
    token: TokenEffect
    alert: bool  # an operator must act: logged at ERROR with the app and the provider's reason
    retry: bool  # the retry policy schedules another attempt

    @property
    def target_status(self) -> str:
        """The status for a provider-side target (an FCM topic or condition): it has no token
        to be dead or held, so a verdict about one is a verdict about the message."""
        return self.status if self.token is TokenEffect.KEEP else "failed"


FEEDBACK: dict[type[Outcome], Feedback] = {
    Delivered: Feedback("delivered", TokenEffect.KEEP, alert=False, retry=False),
    RetryAfter: Feedback("retrying", TokenEffect.KEEP, alert=False, retry=True),
    DeadToken: Feedback("dead", TokenEffect.DEAD, alert=False, retry=False),
    # Held, not removed: the cause can be our configuration (see the module docstring).
    TokenMismatch: Feedback("failed", TokenEffect.HOLD, alert=True, retry=False),
    # The message is at fault: the token stays and the device may get the next one.
    MessageRejected: Feedback("failed", TokenEffect.KEEP, alert=False, retry=False),
    # Our credentials are at fault: no token is touched, operators must act.
    CredentialFailure: Feedback("failed", TokenEffect.KEEP, alert=True, retry=False),
}


def feedback(outcome: Outcome) -> Feedback:
    return FEEDBACK[type(outcome)]


class Result(NamedTuple):
    """One device's outcome, the delivery status recorded for it and, for a retry, the
    seconds until it is due."""

    device: Device
    outcome: Outcome
    status: str
    due_in: float = 0.0


def outcome(
    kind: Kind,
    *,
    app: str,
    reason: str,
    status: int | None = None,
    retry_after: float | None = None,
    since: datetime | None = None,
) -> Outcome:
    """The outcome of a classified answer; ``reason`` must already be ``clean_reason``'d."""
    match kind:
        case Kind.DELIVERED:
            return Delivered(status or 200)
        case Kind.RETRY:
            return RetryAfter(retry_after, reason, status)
        case Kind.DEAD:
            return DeadToken(reason, status, since)
        case Kind.MISMATCH:
            return TokenMismatch(app, reason, status)
        case Kind.REJECTED:
            return MessageRejected(reason, status)
        case Kind.CREDENTIAL:
            return CredentialFailure(app, reason, status)
        case _:
            assert_never(kind)


# The longest reason we keep from a provider's answer.
MAX_REASON = 200


def clean_reason(text: object) -> str:
    """A provider's words as PostgreSQL can store them: decoded leniently, without NUL or
    other control characters, at most ``MAX_REASON`` characters.

    A push service's body is chosen in part by whoever registered the token (a Web Push
    endpoint is any URL a browser hands us): nothing in it may raise in our code.
    """
    if isinstance(text, bytes):
        text = text[: MAX_REASON * 4].decode("utf-8", errors="replace")
    elif not isinstance(text, str):  # a number or a list where a provider should send text
        text = repr(text)[: MAX_REASON * 2]
    text = "".join(c if c.isprintable() else " " for c in text[: MAX_REASON * 2])
    return " ".join(text.split())[:MAX_REASON]
