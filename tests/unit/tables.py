"""What the classification tests of every channel share: the outcome each ``Kind`` must
become, written here independently of ``feedback.outcome``, and what a storable reason is."""

from __future__ import annotations

from notifier.feedback import MAX_REASON, Kind
from notifier.outcomes import CredentialFailure, DeadToken, Delivered, MessageRejected, RetryAfter, TokenMismatch

EXPECTED: dict[Kind, type] = {
    Kind.DELIVERED: Delivered,
    Kind.RETRY: RetryAfter,
    Kind.DEAD: DeadToken,
    Kind.MISMATCH: TokenMismatch,
    Kind.REJECTED: MessageRejected,
    Kind.CREDENTIAL: CredentialFailure,
}


def storable(reason: str) -> None:
    """PostgreSQL takes it: no NUL, no lone surrogate, and it is short."""
    assert "\x00" not in reason
    assert len(reason) <= MAX_REASON
    reason.encode("utf-8")  # raises on a lone surrogate
