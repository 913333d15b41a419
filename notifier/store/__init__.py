"""The PostgreSQL token store: devices, notifications, deliveries, stale tokens.

One ``Store`` per process, over a psycopg connection pool. Audiences are read in keyset
pages (``id > last ORDER BY id LIMIT n``), never with OFFSET and never whole. The queries
follow the data flow: ``devices`` (registration, topics, fan-out), ``deliveries``
(claim, record, status); ``base`` has the pool and the records.
"""

from notifier.store.access import AccessQueries
from notifier.store.base import (
    CLAIM_LEASE,
    HOLD_PROBE_HOURS,
    MAX_LAPSES,
    PROVIDER_TARGET_DEVICE,
    STANDS,
    SUPPRESSES,
    Claim,
    Failure,
    FallbackRow,
    Status,
    TargetClaim,
    transient,
)
from notifier.store.deliveries import DeliveryQueries
from notifier.store.devices import DeviceQueries
from notifier.store.fallbacks import DueFallback, FallbackQueries
from notifier.store.owed import DueRange, OwedQueries
from notifier.store.rules import RuleQueries


class Store(DeviceQueries, DeliveryQueries, OwedQueries, RuleQueries, FallbackQueries, AccessQueries):
    """All the store's queries over one pool."""


__all__ = [
    "CLAIM_LEASE",
    "HOLD_PROBE_HOURS",
    "MAX_LAPSES",
    "PROVIDER_TARGET_DEVICE",
    "STANDS",
    "SUPPRESSES",
    "Claim",
    "DueFallback",
    "DueRange",
    "Failure",
    "FallbackRow",
    "Status",
    "Store",
    "TargetClaim",
    "transient",
]
