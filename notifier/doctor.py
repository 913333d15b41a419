"""``notifier doctor``: is this setup able to send? Each check is one line, OK or what to fix.

Configuration, then the services (PostgreSQL and its schema, Redis, the broker), then
every app's credentials, tried for real without sending anything (the APNs key signs a
JWT, the FCM service account gets an OAuth token from its token endpoint, the VAPID key
parses), then a TLS handshake with each provider endpoint. Queues and the workers seen
on them are the runtime's to say (``workers.inspect``). Every check is bounded by a few
seconds; no secret appears in a detail.
"""

from __future__ import annotations

import concurrent.futures
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from notifier import preflight
from notifier.config import AppConfig, Settings, is_rabbitmq
from notifier.errors import NotifierError

TIMEOUT = 3.0  # seconds, per check that goes over the network
FCM_HOST = ("fcm.googleapis.com", 443)
APNS_HOSTS = {"production": ("api.push.apple.com", 443), "sandbox": ("api.sandbox.push.apple.com", 443)}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _run(name: str, probe: Callable[[], str]) -> Check:
    """``probe`` returns what it found, or raises: its message is the detail (timeouts included)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return Check(name, True, pool.submit(probe).result(timeout=TIMEOUT * 2))
    except concurrent.futures.TimeoutError:
        return Check(name, False, f"no answer within {TIMEOUT * 2:.0f} s")
    except Exception as exc:
        return Check(name, False, str(exc) or type(exc).__name__)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def checks(settings: Settings | None = None) -> list[Check]:
    if settings is None:
        try:
            settings = Settings.current()
        except NotifierError as exc:
            return [Check("configuration", False, str(exc))]
    apps = ", ".join(sorted(settings.apps)) or "none"
    found = [Check("configuration", bool(settings.apps),
                   f"apps file {settings.apps_file}: {apps}" if settings.apps else
                   "no apps: set NOTIFIER_APPS to an apps file (README, Configuration)")]
    found.append(_run("postgresql", lambda: _postgres(settings.database_url)))
    found.append(_run("redis", lambda: _redis(settings.redis_url)))
    if settings.broker_url != settings.redis_url:
        found.append(_run("broker", lambda: _broker(settings.broker_url)))
    for app in settings.apps.values():
        found.extend(_app_checks(app, settings))
    return found


def _postgres(url: str) -> str:
    preflight.check_database(url)
    detail = f"{preflight.where(url)}, schema up to date"
    with preflight.connect(url) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    if row is not None and row[0] != "on":
        # not wrong in itself, but every send rewrites delivery rows: without vacuum they bloat
        detail += "; autovacuum is off: delivery rows bloat with every send (README, Tables that stay small)"
    return detail


def _redis(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {_host_port(url)} does not answer: {type(exc).__name__}") from None
    finally:
        client.close()
    return f"{_host_port(url)} answers"


def _broker(url: str) -> str:
    if not is_rabbitmq(url):
        return _redis(url)
    from kombu import Connection

    with Connection(url, connect_timeout=TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1)
    return f"RabbitMQ at {_host_port(url)} answers"


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or ''}".rstrip(":")


def _app_checks(app: AppConfig, settings: Settings) -> list[Check]:
    out: list[Check] = []
    ca = settings.ca_bundle
    if app.webpush is not None:
        cfg = app.webpush
        out.append(_run(f"{app.name}/webpush key", lambda: _vapid(cfg.vapid_private_key_file, cfg.vapid_subject)))
    if app.apns is not None:
        apns = app.apns
        out.append(_run(f"{app.name}/apns key", lambda: _apns_key(apns.key_file, apns.key_id, apns.team_id,
                                                                  apns.cert_file)))
        host = _endpoint_host(apns.endpoint) if apns.endpoint else APNS_HOSTS[apns.environment]
        out.append(_run(f"{app.name}/apns endpoint", lambda: _tls(host, ca)))
    if app.fcm is not None:
        fcm = app.fcm
        out.append(_run(f"{app.name}/fcm service account", lambda: _fcm_token(fcm.service_account_file, ca)))
        fhost = _endpoint_host(fcm.endpoint) if fcm.endpoint else FCM_HOST
        out.append(_run(f"{app.name}/fcm endpoint", lambda: _tls(fhost, ca)))
    return out


def _endpoint_host(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443


def _vapid(key_file: Path, subject: str) -> str:
    from notifier.webpush import read_vapid_key

    try:
        read_vapid_key(key_file)
    except ValueError:
        raise RuntimeError(f"the VAPID private key in {key_file} does not parse: make one with "
                           "`notifier vapid-keys --out FILE`") from None
    if not subject.startswith(("mailto:", "https://")):
        raise RuntimeError(f"vapid_subject {subject!r} must be a mailto: or https: URL")
    return f"VAPID key {key_file} parses"


def _apns_key(key_file: Path | None, key_id: str | None, team_id: str | None, cert_file: Path | None) -> str:
    if key_file is None:
        assert cert_file is not None  # config.py requires one of the two
        try:
            ssl.create_default_context().load_cert_chain(str(cert_file))
        except (OSError, ssl.SSLError):
            raise RuntimeError(f"the APNs certificate {cert_file} cannot be loaded "
                               "(PEM: certificate and key)") from None
        return f"certificate {cert_file} loads"
    import jwt

    try:
        jwt.encode({"iss": team_id, "iat": int(time.time())}, key_file.read_text(), algorithm="ES256",
                   headers={"kid": key_id})
    except OSError:
        raise RuntimeError(f"the APNs key file {key_file} cannot be read") from None
    except Exception:
        raise RuntimeError(f"the APNs key in {key_file} cannot sign a token (ES256): "
                           "use the .p8 key from Apple's developer site") from None
    return f"key {key_id} of team {team_id} signs a token"


def _fcm_token(service_account: Path, ca: Path | None) -> str:
    from firebase_admin import credentials

    if ca is not None:
        from notifier.trust import trust_extra_ca

        trust_extra_ca(ca)
    try:
        cred = credentials.Certificate(str(service_account))
    except (ValueError, OSError):
        raise RuntimeError(f"the FCM service-account file {service_account} is not usable") from None
    try:
        cred.get_access_token()
    except Exception as exc:
        raise RuntimeError(f"the service account's token endpoint refused or did not answer: "
                           f"{type(exc).__name__}") from None
    return f"service account {cred.service_account_email} gets an OAuth token"


def _tls(host: tuple[str, int], ca: Path | None) -> str:
    name, port = host
    ctx = ssl.create_default_context()
    if ca is not None:
        ctx.load_verify_locations(str(ca))
    try:
        with socket.create_connection((name, port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        raise RuntimeError(f"{name}:{port} answers, but its certificate does not verify: {exc.verify_message}") \
            from None
    except OSError as exc:
        raise RuntimeError(f"{name}:{port} is not reachable: {exc.strerror or type(exc).__name__}") from None
    return f"{name}:{port} answers ({version})"
