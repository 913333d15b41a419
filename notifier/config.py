"""Settings from the environment, read once, and the apps file they point to.

Twelve-factor: service URLs and tuning from ``DATABASE_URL``, ``REDIS_URL`` and
``NOTIFIER_*``; apps and the *paths* of their key files from the TOML file named by
``NOTIFIER_APPS``. Unknown keys fail at startup: a typo must not surface later as
credential failures. Key bytes are read by the channels, never kept here.

Apps file::

    [apps.myapp.webpush]
    vapid_private_key_file = "/etc/notifier/vapid.pem"   # PEM, from `notifier vapid-keys`
    vapid_subject = "mailto:ops@example.com"

    [apps.myapp.apns]
    topic = "com.example.myapp"        # bundle id
    environment = "production"         # or "sandbox"
    key_file = "AuthKey_ABC123.p8"     # token auth: key_file + key_id + team_id
    key_id = "ABC123DEFG"
    team_id = "TEAM123456"
    # cert_file = "apns.pem"           # or certificate auth
    # endpoint = "https://127.0.0.1:8443"   # another endpoint (simulator, gateway)
    # proxy = "http://proxy:3128"      # HTTP CONNECT proxy

    [apps.myapp.fcm]
    service_account_file = "firebase-sa.json"
    # project_id = "my-project"        # default: the file's
    # endpoint = "https://127.0.0.1:9443"   # another base URL than fcm.googleapis.com

    [apps.myapp]
    time_zone = "Europe/Berlin"        # users who set none (default UTC)

    [apps.myapp.categories.promo]      # notify(..., category="promo")
    quiet_hours = "drop"               # defer (default), drop or ignore a user's quiet hours
    cap = 2                            # at most 2 per user ...
    cap_window = 86400                 # ... a day
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from notifier.checks import check_app
from notifier.endpoints import EndpointPolicy
from notifier.errors import ConfigError, InvalidNotification
from notifier.model import Platform
from notifier.preferences import UNCATEGORISED, Category, check_time_zone, parse_categories

# Defaults, each with its reason.
# The standard local ports: `make demo` and a developer laptop work with no environment.
DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/notifier"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Devices per channel task: big enough that one task amortises its queries and its
# broker round trip (a worker process moves ~1k broker messages/s), small enough that a
# retried or redelivered batch is cheap.
DEFAULT_BATCH_SIZE = 500
# Seconds any one provider request may take before it counts as a transient failure.
DEFAULT_SEND_TIMEOUT = 10.0
# Requests in flight per channel per worker process; providers throttle beyond a few hundred.
DEFAULT_MAX_IN_FLIGHT = 100
# A transient failure (throttling, 5xx, timeouts) is retried for an hour from the device's
# first attempt, within the TTL: enough to ride out a provider outage of half an hour and more
# (backoff grows to five minutes between attempts; a Retry-After is honoured exactly).
DEFAULT_RETRY_WINDOW = 3600
# Attempts per device before a transient failure becomes final anyway, well above the
# window's ~30 attempts (a device whose batches keep dying fails after store.MAX_LAPSES).
DEFAULT_MAX_ATTEMPTS = 50
# Sweep dead tokens every 10 minutes: "within hours, not days" with room to spare, and
# each run is a few small batches.
DEFAULT_SWEEP_INTERVAL = 600
# Devices the app has not registered again for 270 days are gone in practice (APNs and FCM
# both treat tokens idle for months as stale; FCM expires them after 270 days).
DEFAULT_INACTIVE_DAYS = 270
# Mass-invalidation guard: hold removal for an app's platform when, within a day, at least
# 100 of its tokens and at least 10% of them were declared dead (removals already made in
# the day count) — the mark of a sandbox/production mix-up or a wrong sender id, not of
# users uninstalling, who leave at a small fraction a day.
DEFAULT_GUARD_WINDOW = 86_400
# Days a removed device stays restorable in delete mode (`notifier tokens --restore`).
DEFAULT_RESTORE_DAYS = 7
# Days delivery outcomes (and the notifications they belong to) are kept; the purge runs
# every PURGE_INTERVAL seconds and deletes in small chunks, never in one long transaction.
# A notification is kept at least until its TTL has passed (at most 28 days).
DEFAULT_RETENTION_DAYS = 30
# Notifications to at most this many users take the transactional lane (workers.queues).
DEFAULT_TRANSACTIONAL_MAX = 20
# Where every worker process writes its metrics for the exporter to sum (notifier/metrics.py);
# one directory per host, shared by its worker pools and its exporter.
DEFAULT_METRICS_DIR = Path(tempfile.gettempdir()) / f"notifier-metrics-{os.getuid()}"
DEFAULT_PURGE_INTERVAL = 3600
DEFAULT_GUARD_SHARE = 0.10
DEFAULT_GUARD_MIN_VERDICTS = 100
# Seconds before Redis delivers an unacknowledged task again (a worker host died holding
# it). Five minutes: above the longest task (a batch's budget is about a minute), and
# nothing waits in Redis with a countdown (retries and parked batches wait in PostgreSQL),
# so nothing legitimate is unacknowledged longer; a dead host's reserved tasks come back
# in minutes, and a redelivered copy of a live task finds its work claimed.
DEFAULT_VISIBILITY_TIMEOUT = 300
# Seconds between two runs of the resumer, which dispatches what is due (retries, parked
# batches) and what lost its owner (lapsed claims, stalled fan-outs, lost tasks).
DEFAULT_RESUME_INTERVAL = 10
# Seconds a dispatched batch may wait in the queue before the resumer presumes its task
# lost and dispatches it again (then twice as long, up to 16 times as long).
DEFAULT_DISPATCH_GRACE = 30.0
# Channel batches a broadcast's fan-out lets wait in a channel's queue before it waits
# itself: a page is written and dispatched when there is room, so rows are claimed within
# seconds of being dispatched (never left for the resumer, after the dispatch grace, to
# presume lost and dispatch again) and a million-device broadcast does not fill the broker.
# 20 batches: 10,000 devices, 4 s of APNs and 20 s of FCM at one pool each on two cores.
DEFAULT_FANOUT_AHEAD = 20
# Seconds a tripped circuit breaker parks a provider's traffic before one probe batch;
# doubled on each failed probe.
DEFAULT_BREAKER_COOLDOWN = 30.0
# Seconds within which a notification with the same collapse key as an earlier one takes
# the earlier one's place for devices not yet sent it (scheduled, deferred, queued).
DEFAULT_COLLAPSE_WINDOW = 86_400


@dataclass(frozen=True, slots=True)
class WebPushApp:
    vapid_private_key_file: Path
    vapid_subject: str


@dataclass(frozen=True, slots=True)
class ApnsApp:
    topic: str  # the app's bundle id
    environment: str = "production"  # or "sandbox"
    # token auth (.p8 key, PEM text read by the channel) ...
    key_file: Path | None = None
    key_id: str | None = None
    team_id: str | None = None
    # ... or certificate auth (certificate and key in one PEM file)
    cert_file: Path | None = None
    # another endpoint than Apple's (a simulator, a gateway), as https://host:port
    endpoint: str | None = None
    # an HTTP CONNECT proxy (host, port)
    proxy: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class FcmApp:
    service_account_file: Path  # the service-account JSON from the Firebase console
    project_id: str  # from the file, unless given
    # another base URL than https://fcm.googleapis.com (a regional endpoint, a gateway,
    # the simulator); the OAuth token endpoint is the service account's token_uri
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class AppConfig:
    name: str
    webpush: WebPushApp | None = None
    apns: ApnsApp | None = None
    fcm: FcmApp | None = None
    # the time zone of users who have not set one (local send times, quiet hours)
    time_zone: str = "UTC"
    categories: Mapping[str, Category] = field(default_factory=dict)

    def category(self, name: str | None) -> Category:
        """A notification's category: as described here; one not described has no rules but
        its name (users may still opt out of it); no category, none at all."""
        if not name:
            return UNCATEGORISED
        return self.categories.get(name) or Category(name, quiet_hours="ignore")

    def platforms(self) -> set[Platform]:
        return {p for p in Platform if getattr(self, p.value, None) is not None}


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    # The Celery broker: REDIS_URL unless NOTIFIER_BROKER_URL names another (amqp:// for
    # RabbitMQ, with quorum queues and publisher confirms). Redis still holds the breakers.
    broker_url: str = DEFAULT_REDIS_URL
    apps: Mapping[str, AppConfig] = field(default_factory=dict)
    apps_file: Path | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_window: int = DEFAULT_RETRY_WINDOW
    # An extra CA bundle the channels trust (a corporate proxy, or the simulators).
    ca_bundle: Path | None = None
    sweep_interval: int = DEFAULT_SWEEP_INTERVAL
    # "delete" removes swept devices; "archive" also keeps their tokens in removed_devices
    sweep_mode: str = "delete"
    inactive_days: int = DEFAULT_INACTIVE_DAYS
    guard_window: int = DEFAULT_GUARD_WINDOW
    guard_share: float = DEFAULT_GUARD_SHARE
    guard_min_verdicts: int = DEFAULT_GUARD_MIN_VERDICTS
    restore_days: int = DEFAULT_RESTORE_DAYS
    retention_days: int = DEFAULT_RETENTION_DAYS
    transactional_max: int = DEFAULT_TRANSACTIONAL_MAX
    # None: metrics stay in each process's memory (NOTIFIER_METRICS_DIR=off)
    metrics_dir: Path | None = DEFAULT_METRICS_DIR
    log_format: str = "text"  # or "json": one JSON object a line
    purge_interval: int = DEFAULT_PURGE_INTERVAL
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    # Web Push origins we POST to besides the known push services (endpoints.py).
    endpoint_policy: EndpointPolicy = field(default_factory=lambda: EndpointPolicy.from_origins(()))
    resume_interval: int = DEFAULT_RESUME_INTERVAL
    dispatch_grace: float = DEFAULT_DISPATCH_GRACE
    fanout_ahead: int = DEFAULT_FANOUT_AHEAD
    collapse_window: int = DEFAULT_COLLAPSE_WINDOW
    breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN

    def __repr__(self) -> str:
        return f"Settings(apps={sorted(self.apps)}, batch_size={self.batch_size})"

    def app(self, name: str) -> AppConfig:
        try:
            return self.apps[name]
        except KeyError:
            raise ConfigError(f"app {name!r} is not in the apps file ({self.apps_file})") from None

    @classmethod
    def current(cls) -> Settings:
        """The settings of this process: the one way code outside this module reads them.

        Read at first use, never at import, and read again only when the environment
        changed (tests and the demo set it). notify() and register_device() call this on
        every call; parsing the apps file each time would put file I/O on their path.
        """
        key = tuple(sorted((k, v) for k, v in os.environ.items()
                           if k.startswith("NOTIFIER_") or k in ("DATABASE_URL", "REDIS_URL")))
        return _current(key)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse settings from an environment mapping; raises ConfigError."""
        apps_file = Path(env["NOTIFIER_APPS"]) if env.get("NOTIFIER_APPS") else None
        ca = Path(env["NOTIFIER_CA_BUNDLE"]) if env.get("NOTIFIER_CA_BUNDLE") else None
        if ca is not None and not ca.is_file():
            raise ConfigError(f"NOTIFIER_CA_BUNDLE={ca} is not a file")
        return cls(
            database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
            broker_url=_broker(env.get("NOTIFIER_BROKER_URL") or env.get("REDIS_URL") or DEFAULT_REDIS_URL),
            apps=load_apps(apps_file) if apps_file else {},
            apps_file=apps_file,
            batch_size=_int(env, "NOTIFIER_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, 10_000),
            send_timeout=_float(env, "NOTIFIER_SEND_TIMEOUT", DEFAULT_SEND_TIMEOUT),
            max_in_flight=_int(env, "NOTIFIER_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, 1, 10_000),
            max_attempts=_int(env, "NOTIFIER_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, 1, 1000),
            retry_window=_int(env, "NOTIFIER_RETRY_WINDOW", DEFAULT_RETRY_WINDOW, 1, 28 * 86_400),
            ca_bundle=ca,
            sweep_interval=_int(env, "NOTIFIER_SWEEP_INTERVAL", DEFAULT_SWEEP_INTERVAL, 10, 86_400),
            sweep_mode=_choice(env, "NOTIFIER_SWEEP_MODE", ("delete", "archive")),
            inactive_days=_int(env, "NOTIFIER_INACTIVE_DAYS", DEFAULT_INACTIVE_DAYS, 1, 3650),
            guard_window=_int(env, "NOTIFIER_GUARD_WINDOW", DEFAULT_GUARD_WINDOW, 60, 7 * 86_400),
            guard_share=_float(env, "NOTIFIER_GUARD_SHARE", DEFAULT_GUARD_SHARE, hi=1.0),
            guard_min_verdicts=_int(env, "NOTIFIER_GUARD_MIN_VERDICTS", DEFAULT_GUARD_MIN_VERDICTS, 1, 10**9),
            restore_days=_int(env, "NOTIFIER_RESTORE_DAYS", DEFAULT_RESTORE_DAYS, 0, 3650),
            retention_days=_int(env, "NOTIFIER_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, 1, 3650),
            transactional_max=_int(env, "NOTIFIER_TRANSACTIONAL_MAX", DEFAULT_TRANSACTIONAL_MAX, 0, 1000),
            metrics_dir=_metrics_dir(env),
            log_format=_choice(env, "NOTIFIER_LOG_FORMAT", ("text", "json")),
            purge_interval=_int(env, "NOTIFIER_PURGE_INTERVAL", DEFAULT_PURGE_INTERVAL, 10, 86_400),
            visibility_timeout=_int(env, "NOTIFIER_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT, 10, 86_400),
            breaker_cooldown=_float(env, "NOTIFIER_BREAKER_COOLDOWN", DEFAULT_BREAKER_COOLDOWN, hi=3600.0),
            endpoint_policy=EndpointPolicy.from_origins(
                tuple(o for o in (env.get("NOTIFIER_WEBPUSH_ORIGINS") or "").split(",") if o.strip())),
            resume_interval=_int(env, "NOTIFIER_RESUME_INTERVAL", DEFAULT_RESUME_INTERVAL, 1, 300),
            dispatch_grace=_float(env, "NOTIFIER_DISPATCH_GRACE", DEFAULT_DISPATCH_GRACE, hi=3600.0),
            fanout_ahead=_int(env, "NOTIFIER_FANOUT_AHEAD", DEFAULT_FANOUT_AHEAD, 1, 100_000),
            collapse_window=_int(env, "NOTIFIER_COLLAPSE_WINDOW", DEFAULT_COLLAPSE_WINDOW, 1, 28 * 86_400),
        )


@lru_cache(maxsize=4)
def _current(key: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(key))


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")


def _broker(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in BROKER_SCHEMES:
        raise ConfigError(f"NOTIFIER_BROKER_URL must be a redis:// or amqp:// URL, got scheme {scheme!r}")
    return url


def is_rabbitmq(url: str) -> bool:
    return urlsplit(url).scheme in ("amqp", "amqps")


def _metrics_dir(env: Mapping[str, str]) -> Path | None:
    raw = env.get("NOTIFIER_METRICS_DIR")
    if not raw:
        return DEFAULT_METRICS_DIR
    return None if raw == "off" else Path(raw)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or choices[0]
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, hi: float = 3600.0) -> float:
    """A number in (0, hi]: seconds by default, a share with ``hi=1``."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not 0 < value <= hi:
        raise ConfigError(f"{name} must be in (0, {hi:g}], got {value}")
    return value


def _keys(where: str, table: Mapping[str, Any], required: set[str], optional: Set[str] = frozenset()) -> None:
    unknown = set(table) - required - optional
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    missing = required - set(table)
    if missing:
        raise ConfigError(f"{where}: missing keys {sorted(missing)}")


def _key_file(where: str, base: Path, raw: object) -> Path:
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: a key file is a path string")
    path = (base / raw).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: key file {path} does not exist")
    return path


def load_apps(path: Path) -> dict[str, AppConfig]:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read apps file {path}: {exc}") from None
    _keys(str(path), raw, {"apps"})
    apps: dict[str, AppConfig] = {}
    for name, table in raw["apps"].items():
        where = f"{path}: apps.{name}"
        check_app(name)
        _keys(where, table, set(), {p.value for p in Platform} | {"time_zone", "categories"})
        webpush = None
        if "webpush" in table:
            wp = table["webpush"]
            _keys(f"{where}.webpush", wp, {"vapid_private_key_file", "vapid_subject"})
            subject = wp["vapid_subject"]
            if not isinstance(subject, str) or not subject.startswith(("mailto:", "https:")):
                raise ConfigError(f"{where}.webpush: vapid_subject must be a mailto: or https: URL")
            webpush = WebPushApp(_key_file(f"{where}.webpush", path.parent, wp["vapid_private_key_file"]), subject)
        apns = _apns(f"{where}.apns", path.parent, table["apns"]) if "apns" in table else None
        fcm = _fcm(f"{where}.fcm", path.parent, table["fcm"]) if "fcm" in table else None
        try:
            zone = check_time_zone(table.get("time_zone", "UTC"))
        except InvalidNotification as exc:
            raise ConfigError(f"{where}: {exc}") from None
        categories = parse_categories(f"{where}.categories", table.get("categories", {}))
        apps[name] = AppConfig(name=name, webpush=webpush, apns=apns, fcm=fcm, time_zone=zone, categories=categories)
    return apps


def _fcm(where: str, base: Path, t: Mapping[str, Any]) -> FcmApp:
    _keys(where, t, {"service_account_file"}, {"project_id", "endpoint"})
    path = _key_file(where, base, t["service_account_file"])
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{where}: the service-account file is not JSON") from None
    if not isinstance(info, dict) or info.get("type") != "service_account" or "private_key" not in info:
        raise ConfigError(f"{where}: the service-account file is not a service account key")
    project = t.get("project_id") or info.get("project_id")
    if not isinstance(project, str) or not project:
        raise ConfigError(f"{where}: no project_id in the file or the config")
    endpoint = _endpoint_url(where, t["endpoint"]).rstrip("/") if "endpoint" in t else None
    return FcmApp(path, project, endpoint)


def _endpoint_url(where: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith("https://") or not urlsplit(raw).hostname:
        raise ConfigError(f"{where}: endpoint must be an https:// URL")
    return raw


def _apns(where: str, base: Path, t: Mapping[str, Any]) -> ApnsApp:
    token_keys, cert_keys = {"key_file", "key_id", "team_id"}, {"cert_file"}
    _keys(where, t, {"topic"}, {"environment", "endpoint", "proxy"} | token_keys | cert_keys)
    env = t.get("environment", "production")
    if env not in ("production", "sandbox"):
        raise ConfigError(f"{where}: environment must be 'production' or 'sandbox'")
    has_token, has_cert = bool(token_keys & set(t)), "cert_file" in t
    if has_token == has_cert:
        raise ConfigError(f"{where}: give either key_file, key_id and team_id (token auth) or cert_file")
    if has_token and not token_keys <= set(t):
        raise ConfigError(f"{where}: token auth needs key_file, key_id and team_id")
    proxy = None
    if "proxy" in t:
        parts = urlsplit(str(t["proxy"]))
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ConfigError(f"{where}: proxy must be http://host:port")
        proxy = (parts.hostname, parts.port)
    return ApnsApp(
        topic=str(t["topic"]),
        environment=env,
        key_file=_key_file(where, base, t["key_file"]) if has_token else None,
        key_id=str(t["key_id"]) if has_token else None,
        team_id=str(t["team_id"]) if has_token else None,
        cert_file=_key_file(where, base, t["cert_file"]) if has_cert else None,
        endpoint=_endpoint_url(where, t["endpoint"]) if "endpoint" in t else None,
        proxy=proxy,
    )
