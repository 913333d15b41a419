"""Circuit breakers, shared by every worker through Redis.

One breaker per provider and app for APNs and FCM (``apns/shop``), and one per push
service origin for Web Push (``webpush/https://updates.push.services.mozilla.com``),
shared by every app: one browser vendor's push service down, or one hostile endpoint,
parks that origin's traffic only.

A breaker trips on a failure *rate*: over a sliding window (``WINDOW`` seconds, in
``BUCKET``-second buckets) at least ``MIN_REQUESTS`` sends and at least half of them
failing the way an outage does (5xx, timeouts, lost connections). 429 is throttling,
not an outage, and token or message errors say nothing about the provider's health:
neither counts. One failed device in a one-device batch never trips it.

Tripped, it parks traffic for ``Settings.breaker_cooldown``: the channel task asks
*before* it claims (``workers.tasks.deliver``), and parked rows wait in PostgreSQL, due
again at the reopening plus a random share of the cooldown, so they do not all come
back at once. After the cooldown one task (a Redis lock) sends one batch as a probe:
mostly failing, the breaker trips again for twice as long (up to ``MAX_COOLDOWN``);
otherwise it closes. Redis unreachable, every breaker is closed (they only save load).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from notifier.outcomes import Outcome, RetryAfter

log = logging.getLogger(__name__)

PREFIX = "notifier:breaker:"
# Tripped breakers per platform: a sorted set of names scored by when they reopen, so a
# task learns every tripped breaker of its platform in one read.
TRIPPED = PREFIX + "tripped:"
MAX_COOLDOWN = 300.0
WINDOW = 30  # seconds of sends a breaker judges
BUCKET = 10  # seconds per counting bucket
MIN_REQUESTS = 20  # fewer sends than this in the window never trip it
FAILURE_RATE = 0.5
# How long one probe may hold a half-open breaker before another task may probe.
PROBE_TTL = 120
# A task that finds a breaker half-open and another task probing parks its rows this long.
PROBE_WAIT = 5.0


@dataclass(frozen=True)
class Admission:
    send: bool
    probe: bool = False
    wait: float = 0.0  # when parked: seconds until it is worth trying again
    spread: float = 0.0  # when parked: spread the rows' return over this many seconds more


CLOSED = Admission(send=True)  # what a closed breaker answers: send


def is_outage(outcome: Outcome) -> bool:
    return isinstance(outcome, RetryAfter) and (outcome.status is None or outcome.status >= 500)


def provider_breaker(platform: str, app: str) -> str:
    return f"{platform}/{app}"


def origin_breaker(origin: str) -> str:
    return f"webpush/{origin}"


class Breakers:
    """Every breaker, over one Redis client."""

    def __init__(self, client: redis.Redis, cooldown: float) -> None:
        self._r = client
        self._cooldown = cooldown

    def tripped(self, platform: str) -> dict[str, float]:
        """The platform's tripped breakers (open or half-open) -> when they reopen."""
        try:
            return _scored(self._r.zrange(TRIPPED + platform, 0, -1, withscores=True))
        except redis.RedisError as exc:
            log.warning("breakers unavailable (%s): sending", type(exc).__name__)
            return {}

    def admit(self, name: str, until: float) -> Admission:
        """For a tripped breaker: park until it reopens, or be its one probe once it has."""
        now = time.time()
        if now < until:
            return Admission(send=False, wait=until - now, spread=min(max(self._cooldown, 5.0), MAX_COOLDOWN))
        try:
            if self._r.set(PREFIX + name + ":probe", "1", nx=True, ex=PROBE_TTL):
                return Admission(send=True, probe=True)
        except redis.RedisError:
            return CLOSED
        return Admission(send=False, wait=PROBE_WAIT, spread=PROBE_WAIT)

    def release(self, name: str) -> None:
        """A probe that sent nothing gives its turn back: else the next probe would wait
        ``PROBE_TTL`` (two minutes) for it, and the outage with it."""
        try:
            self._r.delete(PREFIX + name + ":probe")
        except redis.RedisError:
            pass  # the turn lapses after PROBE_TTL

    def observe(self, name: str, outcomes: Sequence[Outcome], admission: Admission = CLOSED) -> None:
        if not outcomes:
            return
        try:
            self._observe(name, outcomes, admission)
        except redis.RedisError as exc:
            log.warning("breaker %s unavailable (%s): outcomes not counted", name, type(exc).__name__)

    def _observe(self, name: str, outcomes: Sequence[Outcome], admission: Admission) -> None:
        failures = sum(1 for o in outcomes if is_outage(o))
        if admission.probe:
            if failures and failures >= FAILURE_RATE * len(outcomes):
                self._trip(name, failures, len(outcomes), again=True)
            else:
                self._close(name)
            return
        bucket = int(time.time() // BUCKET)
        sent, failed = f"{PREFIX}{name}:n:{bucket}", f"{PREFIX}{name}:f:{bucket}"
        pipe = self._r.pipeline()
        pipe.incrby(sent, len(outcomes))
        pipe.expire(sent, WINDOW + BUCKET)
        if failures:
            pipe.incrby(failed, failures)
            pipe.expire(failed, WINDOW + BUCKET)
        pipe.execute()
        if not failures:
            return
        buckets = range(bucket - WINDOW // BUCKET + 1, bucket + 1)
        counts = self._r.mget([f"{PREFIX}{name}:{kind}:{b}" for kind in "nf" for b in buckets])
        total = sum(int(c) for c in counts[:len(buckets)] if c)
        failed_total = sum(int(c) for c in counts[len(buckets):] if c)
        if total >= MIN_REQUESTS and failed_total >= FAILURE_RATE * total:
            self._trip(name, failed_total, total, again=False)

    def _trip(self, name: str, failures: int, total: int, *, again: bool) -> None:
        key, now = PREFIX + name, time.time()
        state = self._r.hgetall(key)
        if state and not again and float(state[b"until"]) > now:
            return  # already open
        cooldown = min(MAX_COOLDOWN, float(state[b"cooldown"]) * 2) if state else self._cooldown
        until = now + cooldown
        pipe = self._r.pipeline()
        pipe.hset(key, mapping={"until": until, "cooldown": cooldown})
        pipe.expire(key, int(cooldown + MAX_COOLDOWN))
        pipe.zadd(TRIPPED + name.split("/", 1)[0], {name: until})
        pipe.delete(key + ":probe")
        pipe.execute()
        log.error("breaker %s open for %.0fs: %d of %d sends failed like an outage", name, cooldown, failures, total)

    def _close(self, name: str) -> None:
        key = PREFIX + name
        pipe = self._r.pipeline()
        pipe.delete(key, key + ":probe")
        pipe.zrem(TRIPPED + name.split("/", 1)[0], name)
        pipe.execute()
        log.warning("breaker %s closed: the probe batch went through", name)


def open_breakers(client: redis.Redis) -> list[str]:
    """The names of the breakers parking traffic now (for the exporter)."""
    now, names = time.time(), []
    for key in client.scan_iter(match=TRIPPED + "*", count=100):
        names += [name for name, until in _scored(client.zrange(key, 0, -1, withscores=True)).items() if until > now]
    return sorted(names)


def _scored(members: Any) -> dict[str, float]:
    """A sorted set read WITHSCORES, as {member: score}."""
    return {(m.decode() if isinstance(m, bytes) else str(m)): float(score) for m, score in members}
