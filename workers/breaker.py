"""A circuit breaker per provider and app, shared by every worker through Redis.

During an outage (most of a batch failing with 5xx, timeouts or lost connections) the
breaker opens: batches are parked (their devices go back to 'retrying', the attempt not
counted) until the cooldown ends. Then one batch goes through as a probe; if it still
fails the breaker opens again for twice as long (up to ``MAX_COOLDOWN``), otherwise it
closes and the parked batches flow. 429 is throttling, not an outage, and token or
message errors say nothing about the provider's health: neither counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from notifier.outcomes import Outcome, RetryAfter

log = logging.getLogger(__name__)

# The first trip parks traffic for ``Settings.breaker_cooldown``; each failed probe doubles it.
MAX_COOLDOWN = 300.0
# A batch trips the breaker when at least half of it, and at least this many (or all of
# a smaller batch), failed the way an outage does.
MIN_FAILURES = 10
# How long one probe may hold the half-open breaker before another task may probe.
PROBE_TTL = 120


@dataclass(frozen=True)
class Admission:
    send: bool
    probe: bool = False
    wait: float = 0.0  # when parked: seconds until it is worth trying again


def open_breakers(client: redis.Redis) -> list[str]:
    """The names of the breakers open now (for the exporter)."""
    now, names = time.time(), []
    for key in client.scan_iter(match="notifier:breaker:*", count=500):
        name = key.decode()
        if name.endswith(":probe"):
            continue
        until = client.hget(name, "until")
        if until is not None and float(until) > now:
            names.append(name.removeprefix("notifier:breaker:"))
    return sorted(names)


def is_outage(outcome: Outcome) -> bool:
    return isinstance(outcome, RetryAfter) and (outcome.status is None or outcome.status >= 500)


class Breaker:
    def __init__(self, client: redis.Redis, app: str, platform: str, cooldown: float) -> None:
        self._r = client
        self._cooldown = cooldown
        self._key = f"notifier:breaker:{platform}:{app}"
        self._probe = self._key + ":probe"
        self.name = f"{platform}/{app}"

    def admit(self) -> Admission:
        """Fails open: with Redis unreachable the batch is sent (the breaker only saves load)."""
        try:
            return self._admit()
        except redis.RedisError as exc:
            log.warning("breaker %s unavailable (%s): sending", self.name, type(exc).__name__)
            return Admission(send=True)

    def observe(self, outcomes: Sequence[Outcome], admission: Admission) -> None:
        try:
            self._observe(outcomes, admission)
        except redis.RedisError as exc:
            log.warning("breaker %s unavailable (%s): outcome not counted", self.name, type(exc).__name__)

    def _admit(self) -> Admission:
        state = self._r.hgetall(self._key)
        if not state:
            return Admission(send=True)
        until = float(state[b"until"])
        now = time.time()
        if now < until:
            return Admission(send=False, wait=until - now)
        if self._r.set(self._probe, "1", nx=True, ex=PROBE_TTL):
            return Admission(send=True, probe=True)
        return Admission(send=False, wait=min(2.0, float(state[b"cooldown"])))

    def _observe(self, outcomes: Sequence[Outcome], admission: Admission) -> None:
        failures = sum(1 for o in outcomes if is_outage(o))
        outage = failures >= min(MIN_FAILURES, len(outcomes)) and failures * 2 >= len(outcomes) and failures > 0
        if outage:
            self._trip(failures, len(outcomes))
        elif admission.probe:
            self._r.delete(self._key, self._probe)
            log.warning("breaker %s closed: the probe batch went through", self.name)

    def _trip(self, failures: int, total: int) -> None:
        state = self._r.hgetall(self._key)
        now = time.time()
        if state and float(state[b"until"]) > now:
            return  # already open
        cooldown = min(MAX_COOLDOWN, float(state[b"cooldown"]) * 2) if state else self._cooldown
        self._r.hset(self._key, mapping={"until": now + cooldown, "cooldown": cooldown})
        self._r.expire(self._key, int(cooldown + MAX_COOLDOWN))
        self._r.delete(self._probe)
        log.error("breaker %s open for %.0fs: %d of %d sends failed like an outage", self.name, cooldown,
                  failures, total)
