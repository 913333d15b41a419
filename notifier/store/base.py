"""The store's foundation: the connection pool, the retry on transient errors, and the
records the store hands out. ``devices`` and ``deliveries`` hold the queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from notifier.errors import StoreError
from notifier.model import Device, Notification, ProviderTarget

# A claim lapses this long after it was taken or last renewed; a live batch renews it
# every few hundred milliseconds as it records outcomes, so only a dead or wedged one
# loses it, and its devices are resumed within this lease and one resume interval.
CLAIM_LEASE = timedelta(seconds=30)


def commit_not_waiting_unless(durable: bool, conn: psycopg.Connection[Any]) -> None:
    """Not ``durable`` (the transactional lane): this transaction's commit does not wait
    for its WAL flush, which behind a broadcast's writes takes ~4 ms (p90 ~10 ms) against
    0.4 ms. A crash of PostgreSQL within a few hundred milliseconds may lose it (README,
    "Commits that do not wait for the disk")."""
    if not durable:
        conn.execute("SET LOCAL synchronous_commit = off")


# PostgreSQL restarting, a failover, a dropped connection: every store call is retried
# for up to a minute (each is one transaction, so a retry never applies anything twice).
transient = retry(
    retry=retry_if_exception_type((psycopg.OperationalError, PoolTimeout)),
    wait=wait_exponential(multiplier=0.2, max=2),
    stop=stop_after_delay(60),
    reraise=True,
)
# What a running batch writes (its outcomes, its lease) gives up sooner, well inside the
# 30 s lease: a batch that cannot write must stop sending before another takes over.
transient_in_batch = retry(
    retry=retry_if_exception_type((psycopg.OperationalError, PoolTimeout)),
    wait=wait_exponential(multiplier=0.2, max=2),
    stop=stop_after_delay(15),
    reraise=True,
)
# A dead-token verdict stands unless the app registered the token again after it: after
# Apple's timestamp where APNs gives one, else after we learned it. (SQL, over d and s.)
STANDS = "d.registered_at <= coalesce(s.provider_since, s.learned_at)"
# Hours a held verdict suppresses its token before one send goes through to test it again.
HOLD_PROBE_HOURS = 24
# A verdict that stands suppresses the token: a dead one for good, a held one for a day.
SUPPRESSES = f"({STANDS} AND (s.kind = 'dead' OR s.learned_at > now() - interval '{HOLD_PROBE_HOURS} hours'))"


# A device whose claims lapsed this many times (each time its batch died before recording
# it: a worker crash, a kill, a wedge) fails: a poison payload or token must not take a
# batch down NOTIFIER_MAX_ATTEMPTS times.
MAX_LAPSES = 5

# A provider-side target's one delivery row uses this device id (no device has it).
PROVIDER_TARGET_DEVICE = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """What one channel task must send: the notification and its devices still owed it."""

    notification: Notification
    app: str
    expired: bool
    devices: list[Device]
    # device id -> attempts so far, this one included
    attempts: dict[int, int]
    # the claim's identity: only its holder may write these rows' outcomes
    claim_id: str = ""
    # devices whose retry window (NOTIFIER_RETRY_WINDOW from their first attempt) has closed
    window_closed: frozenset[int] = frozenset()
    # seconds of the TTL left when claimed: a retry due later is expired, not parked
    remaining: float = float("inf")
    # False: taken without waiting for the disk (the transactional lane), and its final
    # outcomes written so too (workers.batch)
    durable: bool = True


@dataclass(frozen=True, slots=True)
class TargetClaim:
    """The one delivery row of a provider-side send (an FCM topic or condition)."""

    notification: Notification
    app: str
    target: ProviderTarget
    attempts: int
    claim_id: str
    window_open: bool = True  # NOTIFIER_RETRY_WINDOW from the first attempt
    remaining: float = float("inf")


@dataclass(frozen=True, slots=True)
class Failure:
    device_id: int
    platform: str
    token_tail: str
    status: str
    provider_status: int | None
    reason: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class FallbackRow:
    user_id: str
    status: str  # waiting, dispatching, confirmed, sent, failed
    reason: str | None  # why it was owed: no device, every device dead, none delivered in time (...)
    detail: str | None  # what took it: task NAME, webhook STATUS


@dataclass(frozen=True, slots=True)
class Status:
    notification_id: str
    app: str
    created_at: datetime
    fanout_done: bool
    counts: dict[str, int]
    failures: Sequence[Failure]
    # a critical notification's fallbacks, one per user (the first 1,000)
    fallbacks: Sequence[FallbackRow] = ()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def settled(self) -> bool:
        """Fan-out finished and no delivery is still pending, in flight or retrying."""
        busy = {"pending", "sending", "retrying"}
        return self.fanout_done and not any(self.counts.get(s) for s in busy)


class StoreBase:
    def __init__(self, database_url: str, *, max_size: int = 4) -> None:
        # prepare_threshold=None: every statement planned for its own parameters. psycopg
        # prepares a statement run five times, and PostgreSQL may then settle on a generic
        # plan: for the outcome UPDATE, one that read every row of the notification (109 µs
        # a device written at 100,000 devices, against 9 µs planned for the ids given).
        # Planning costs ~0.2 ms a statement, and statements here carry hundreds of rows.
        # (It is also what PgBouncer in transaction mode needs.)
        self._pool = ConnectionPool(database_url, min_size=1, max_size=max_size, open=False, name="notifier",
                                    check=ConnectionPool.check_connection, reconnect_timeout=60,
                                    kwargs={"prepare_threshold": None})
        try:
            self._pool.open(wait=True, timeout=10)
        except psycopg.OperationalError as exc:
            raise StoreError(f"PostgreSQL is not reachable: {exc}") from None
        except Exception as exc:  # pool.open raises PoolTimeout on an unreachable server
            raise StoreError(f"PostgreSQL is not reachable at the configured DATABASE_URL: {exc}") from None

    @property
    def pool(self) -> ConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
