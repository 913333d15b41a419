"""A user's preferences applied to each page the fan-out writes, before it is dispatched.

The store judges rows in SQL (``notifier.store.rules``): local send times, opt-outs and
quiet hours. The frequency cap is counted here, in Redis, so every worker sees the same
count: one Lua script per user checks and adds atomically, and a notification counts
once per user however many devices and pages it spans.
"""

from __future__ import annotations

import redis

from notifier.model import NotifyRequest, Users
from notifier.preferences import UNCATEGORISED, Category
from workers.runtime import Runtime

CAP_PREFIX = "notifier:cap:"

# KEYS[1]: the user's sorted set of notification ids by time; ARGV: nid, window, cap.
# 1 when the notification may go to the user (counted now, or already counted), else 0.
_CAP = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - tonumber(ARGV[2]))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], t, ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
WHOLE = (0, 2**63 - 1)  # every device id: a user list's rows are all written before its first page


class PageRules:
    """What the fan-out applies to a notification's rows, page by page (or once, for a user
    list). ``needed`` is False for the common case, an uncategorised notification sent now:
    the fan-out then does no extra query."""

    def __init__(self, rt: Runtime, request: NotifyRequest) -> None:
        self.rt, self.request = rt, request
        cfg = rt.settings.apps.get(request.app)
        name = request.notification.category
        self.category = cfg.category(name) if cfg else Category(name, "ignore") if name else UNCATEGORISED
        self.zone = cfg.time_zone if cfg else "UTC"
        self.collapse_key = request.notification.collapse_key
        self.needed = bool(request.local_at or self.category.name or self.collapse_key)
        # rows wait as 'judging' until apply: a crash between the insert and apply leaves
        # nothing the resumer could send unjudged (the resumed fan-out judges them)
        self.judges = bool(request.local_at or self.category.name)
        self.users = request.audience.ids if isinstance(request.audience, Users) else None

    def apply(self, lo: int, hi: int) -> None:
        store, nid = self.rt.store, self.request.id
        if self.judges:
            store.apply_rules(nid, lo, hi, local_at=self.request.local_at, category=self.category, zone=self.zone,
                              since=self.request.requested_at)
        if self.category.cap:
            capped = [u for u in store.page_users(nid, lo, hi) if not self._allow(u)]
            if capped:
                store.skip_users(nid, lo, hi, capped, f"frequency cap: {self.category.cap} "
                                                      f"{self.category.name} per {self.category.cap_window} s")
        if self.collapse_key:
            store.collapse(nid, self.request.app, self.collapse_key, self.rt.settings.collapse_window, lo, hi)
        if self.category.critical:  # after the rules: a user's window opens when their last device is due
            store.add_fallbacks(nid, self.request.app, self.category.confirm_within, users=self.users, lo=lo, hi=hi)

    def _allow(self, user: str) -> bool:
        client: redis.Redis = self.rt.redis
        key = f"{CAP_PREFIX}{self.request.app}:{self.category.name}:{user}"
        cap = self.category.cap or 0
        return bool(client.eval(_CAP, 1, key, self.request.id, self.category.cap_window, cap))
