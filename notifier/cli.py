"""The ``notifier`` command: migrate, vapid-keys, status, demo.

Domain commands only need PostgreSQL. ``demo`` drives the simulators and a worker
through the ``harness`` package, imported only when that command runs.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.table import Table

from notifier.config import Settings
from notifier.errors import NotifierError
from notifier.migrate import migrate as run_migrations
from notifier.model import Platform
from notifier.store import Status, Store


@click.group()
def main() -> None:
    """Push notifications to APNs, FCM and Web Push."""


def _settings() -> Settings:
    try:
        return Settings.current()
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--create", is_flag=True, help="create the database first when it does not exist")
def migrate(create: bool) -> None:
    """Apply the schema migrations to DATABASE_URL (safe to run twice)."""
    from notifier import preflight

    url = _settings().database_url
    try:
        if create and preflight.create_database(url):
            click.echo(f"created database {preflight.where(url)}")
        preflight.connect(url).close()  # a missing database or server said in one line, at once
        applied = run_migrations(url)
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(f"migration failed: {exc}") from None
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


@main.command("vapid-keys")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write the private key here (0600)")
def vapid_keys(out: Path | None) -> None:
    """Make a VAPID key pair; print the public key (the browser's applicationServerKey)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    public = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    if out is not None:
        if out.exists():
            raise click.ClickException(f"{out} exists; not overwriting a key")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        click.echo(f"private key written to {out}")
    else:
        click.echo(pem.decode(), nl=False)
    click.echo(f"public key (applicationServerKey): {public}")


@main.command()
@click.argument("notification_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(notification_id: str, as_json: bool) -> None:
    """Counts by status and every failed delivery of one notification."""
    store = _store()
    try:
        st = store.status(notification_id)
    except Exception as exc:  # a malformed id is a psycopg DataError
        raise click.ClickException(f"cannot read status: {exc}") from None
    finally:
        store.close()
    if st is None:
        raise click.ClickException(f"no notification {notification_id}")
    if as_json:
        out = asdict(st)
        out["created_at"] = st.created_at.isoformat()
        out["settled"] = st.settled
        click.echo(json.dumps(out, indent=2))
        return
    console = Console()
    console.print(f"notification [bold]{st.notification_id}[/] app={st.app} total={st.total} "
                  f"fan-out {'done' if st.fanout_done else 'in progress'}")
    console.print("  " + "  ".join(f"{k}={v}" for k, v in sorted(st.counts.items())))
    if st.fallbacks:
        table = Table("user", "fallback", "reason", "detail", title="critical: fallbacks")
        for fb in st.fallbacks:
            table.add_row(fb.user_id, fb.status, fb.reason or "", fb.detail or "")
        console.print(table)
    if st.failures:
        table = Table("device", "platform", "token", "status", "provider", "reason", "attempts")
        for f in st.failures:
            table.add_row(str(f.device_id), f.platform, "…" + f.token_tail, f.status,
                          str(f.provider_status or ""), f.reason or "", str(f.attempts))
        console.print(table)


def _when(value: str) -> datetime:
    """An ISO time, or an age ("90m", "6h", "2d") before now."""
    units = {"m": 60, "h": 3600, "d": 86_400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.ClickException(f"--since {value!r}: give an ISO time or an age such as 90m, 6h or 2d") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _store() -> Store:
    """The store, once ``preflight`` found the database there and migrated: a user's
    mistake is one line at once, not a minute of pool retries."""
    from notifier import preflight

    try:
        url = _settings().database_url
        preflight.check_database(url)
        return Store(url)
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("sweep")
@click.option("--confirm", "confirm_app", metavar="APP",
              help="remove the tokens a mass-invalidation hold or a held verdict keeps")
@click.option("--release", "release_app", metavar="APP", help="void a held mass invalidation: the tokens were live")
@click.option("--platform", type=click.Choice([p.value for p in Platform]),
              help="with --confirm or --release: only this platform's hold and verdicts (default: all)")
@click.option("--json", "as_json", is_flag=True)
def sweep_command(confirm_app: str | None, release_app: str | None, platform: str | None, as_json: bool) -> None:
    """Remove dead and inactive tokens now (beat runs this every NOTIFIER_SWEEP_INTERVAL)."""
    from notifier import sweep as hygiene
    from notifier import tokens as admin

    if platform and not (confirm_app or release_app):
        raise click.UsageError("--platform goes with --confirm or --release")
    store = _store()
    try:
        if confirm_app and not admin.confirm(store, confirm_app, platform):
            raise click.ClickException(f"app {confirm_app!r} has no held mass invalidation and no held verdicts"
                                       + (f" on {platform}" if platform else ""))
        if release_app:
            n = admin.release(store, release_app, platform)
            click.echo(f"released {n} verdicts of app {release_app}" + (f" on {platform}" if platform else ""))
        result = hygiene.sweep(store, _settings())
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(f"removed dead: {result.removed_dead or 0}  expired: {result.expired or 0}  "
               f"verdicts voided by re-registration: {result.voided}")
    for key, n in result.held.items():
        app, plat = key.split("/", 1)
        click.echo(f"HELD {key}: {n} dead-token verdicts wait for `notifier sweep --confirm {app} --platform {plat}` "
                   f"or `--release {app} --platform {plat}`")


@main.command()
@click.argument("app")
@click.argument("user")
@click.argument("platform", type=click.Choice([p.value for p in Platform]))
@click.argument("token")
@click.option("--json", "as_json", is_flag=True)
def register(app: str, user: str, platform: str, token: str, as_json: bool) -> None:
    """Register one device: TOKEN is the APNs hex token, the FCM registration token, or the
    Web Push subscription's JSON (or @FILE holding it)."""
    from notifier.api import register_device

    if token.startswith("@"):
        try:
            token = Path(token[1:]).read_text().strip()
        except OSError as exc:
            raise click.ClickException(f"cannot read {token[1:]}: {exc.strerror}") from None
    store = _store()
    try:
        device_id = register_device(app, user, platform, token, store=store)
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(json.dumps({"device_id": device_id}) if as_json else f"registered device {device_id}")


@main.command("import")
@click.argument("app")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]),
              help="default: from the file name (.jsonl/.ndjson/.json: JSON lines; else CSV)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def import_devices(app: str, file: Path, fmt: str | None, as_json: bool) -> None:
    """Register the devices in FILE (CSV with a user,platform,token header, or JSON lines),
    with register's checks. Bad rows are listed with their line numbers and skipped; good
    rows are kept. Exit status 1 when any row was bad. README, "Bulk import", shows how to
    export django-push-notifications' tables to this CSV."""
    from notifier.bulk import detect_format, read_rows, register_devices

    fmt = fmt or detect_format(file.name)
    store = _store()
    try:
        if as_json or not sys.stderr.isatty():
            stream: Any = open(file, encoding="utf-8", newline="")  # closed by the with below
        else:
            from rich.progress import open as progress_open

            stream = progress_open(file, "r", encoding="utf-8", newline="", description="importing",
                                   console=Console(stderr=True), transient=True)
    except OSError as exc:
        store.close()
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    try:
        with stream:
            report = register_devices(app, read_rows(stream, fmt), store=store)
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{file} is not UTF-8 text") from None
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for bad in report.bad_rows:
            click.echo(f"{file}:{bad.line}: {bad.error}", err=True)
        if report.bad > len(report.bad_rows):
            click.echo(f"… and {report.bad - len(report.bad_rows)} more bad rows", err=True)
        click.echo(f"{report.rows} rows: {report.inserted} new devices, {report.updated} updated, "
                   f"{report.bad} bad rows skipped")
    sys.exit(1 if report.bad else 0)


@main.command()
@click.argument("app")
@click.option("--user", "users", multiple=True, help="a user id (repeat for more)")
@click.option("--users-file", type=click.File(), help="user ids, one a line")
@click.option("--topic", help="one of our topics")
@click.option("--everyone", "everyone", is_flag=False, flag_value="*", default=None,
              help="every device of the app (or --everyone=PLATFORM)")
@click.option("--title")
@click.option("--body")
@click.option("--data", help="custom data, a JSON object")
@click.option("--ttl", type=int, help="seconds (default one day)")
@click.option("--category", help="the app's category (opt-outs, quiet hours, frequency cap)")
@click.option("--collapse-key", help="a later notification with the same key replaces this one where not yet sent")
@click.option("--send-at", help="an ISO instant with offset, an ISO local date-time or HH:MM (each user's zone)")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="follow the recorded outcomes until every device has one")
@click.option("--timeout", default=300.0, show_default=True, help="seconds to follow them")
@click.option("--json", "as_json", is_flag=True)
def send(app: str, users: tuple[str, ...], users_file: Any, topic: str | None, everyone: str | None,
         title: str | None, body: str | None, data: str | None, ttl: int | None, category: str | None,
         collapse_key: str | None, send_at: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Send a notification through the workers (to users, a file of user ids, a topic or everyone)."""
    audience: dict[str, Any] = {}
    ids = list(users) + ([line.strip() for line in users_file if line.strip()] if users_file else [])
    if ids:
        audience["users"] = ids
    if topic:
        audience["topic"] = topic
    if everyone:
        audience["everyone"] = True if everyone == "*" else everyone
    fields: dict[str, Any] = {k: v for k, v in (("title", title), ("body", body), ("ttl", ttl), ("category", category),
                                                ("collapse_key", collapse_key), ("send_at", send_at)) if v is not None}
    if data is not None:
        try:
            fields["data"] = json.loads(data)
        except ValueError:
            raise click.ClickException("--data must be a JSON object") from None
    store = _store() if wait and not send_at else None
    from workers import notify  # the runtime: Celery, imported only for this command

    try:
        nid = notify.delay(app, **audience, **fields).id
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None
    if store is None:
        click.echo(json.dumps({"id": nid}) if as_json else f"{'scheduled' if send_at else 'enqueued'} {nid}")
        return
    try:
        st = _follow(store, nid, timeout, quiet=as_json)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"id": nid, "settled": bool(st and st.settled), "counts": st.counts if st else {}}))
    elif st is None or not st.settled:
        raise click.ClickException(f"{nid}: not settled within {timeout:.0f} s (`notifier status {nid}`)")
    else:
        click.echo(f"{nid}: " + "  ".join(f"{k}={v}" for k, v in sorted(st.counts.items())))


@main.command()
@click.argument("notification_id")
@click.option("--json", "as_json", is_flag=True)
def cancel(notification_id: str, as_json: bool) -> None:
    """Cancel what a notification has not sent yet (all of it, before a scheduled release)."""
    from notifier.api import cancel as cancel_notification

    store = _store()
    try:
        before, rows = cancel_notification(notification_id, store=store)
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"id": notification_id, "before_release": before, "cancelled": rows}))
    elif not before and not rows:
        raise click.ClickException(f"{notification_id}: nothing left to cancel (everything was sent or decided)")
    else:
        click.echo(f"{notification_id}: cancelled{' before its release' if before else ''}; "
                   f"{rows} deliveries (and fallbacks) not sent")


@main.command()
@click.argument("app")
@click.argument("user")
@click.option("--time-zone", help="IANA name, such as Europe/Berlin ('' for the app's)")
@click.option("--quiet-hours", help="START-END in the user's zone, such as 22:00-07:00 ('' for none)")
@click.option("--opt-out", help="comma-separated categories the user wants none of ('' for none)")
def prefs(app: str, user: str, time_zone: str | None, quiet_hours: str | None, opt_out: str | None) -> None:
    """Set a user's time zone, quiet hours and opt-outs; what is not given stays as it is."""
    from notifier.api import set_preferences
    from notifier.store.rules import UNSET

    given: dict[str, object] = {}
    if time_zone is not None:
        given["time_zone"] = time_zone or None
    if quiet_hours is not None:
        given["quiet_hours"] = tuple(quiet_hours.split("-", 1)) if quiet_hours else None
    if opt_out is not None:
        given["opt_out"] = [c.strip() for c in opt_out.split(",") if c.strip()]
    store = _store()
    try:
        set_preferences(app, user, store=store, **{k: given.get(k, UNSET) for k in ("time_zone", "quiet_hours",
                                                                                     "opt_out")})
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"{app}/{user}: preferences saved")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--openapi", is_flag=True, help="print the OpenAPI document and exit")
def serve(host: str, port: int, openapi: bool) -> None:
    """The HTTP API and the Web Push subscribe page (README, HTTP API)."""
    from workers.web import openapi_document

    if openapi:
        click.echo(openapi_document(), nl=False)
        return
    import uvicorn

    _store().close()  # the database is there and migrated: one line now, not a 500 later
    uvicorn.run("workers.web:create_app", factory=True, host=host, port=port, proxy_headers=True,
                log_level="info", access_log=False)


@main.group("api-token")
def api_token() -> None:
    """Bearer tokens of the HTTP API, per app."""


@api_token.command("create")
@click.argument("app")
@click.option("--name", required=True, help="what it is for (revoke by this name)")
@click.option("--scope", type=click.Choice(["send", "register"]), default="send", show_default=True,
              help="register: devices only, safe in a web page")
def api_token_create(app: str, name: str, scope: str) -> None:
    """Make a token and print it: this is the only time it is shown (only its hash is kept).
    A register token comes with its signing secret, on a second line: your backend signs
    each user id with it (user_proof, README, HTTP API)."""
    from notifier.checks import check_app

    try:
        app = check_app(app)
        if (settings := _settings()).apps_file is not None and app not in settings.apps:
            raise click.ClickException(f"app {app!r} is not in {settings.apps_file}")
    except NotifierError as exc:
        raise click.ClickException(str(exc)) from None
    store = _store()
    try:
        token, secret = store.create_api_token(app, name, scope)
        click.echo(token)
        if secret:
            click.echo(secret)
    finally:
        store.close()


@api_token.command("revoke")
@click.argument("app")
@click.option("--name", required=True)
def api_token_revoke(app: str, name: str) -> None:
    store = _store()
    try:
        n = store.revoke_api_tokens(app, name)
    finally:
        store.close()
    if not n:
        raise click.ClickException(f"no live token named {name!r} for {app}")
    click.echo(f"revoked {n} token(s)")


def _follow(store: Store, nid: str, timeout: float, *, quiet: bool) -> Status | None:
    """Poll the recorded outcomes, with a progress bar of devices that have one."""
    from rich.progress import Progress

    end = time.monotonic() + timeout
    st = None
    with Progress(disable=quiet, transient=True) as progress:
        bar = progress.add_task("waiting for the fan-out", total=None)
        while time.monotonic() < end:
            st = store.status(nid, failures=False)
            if st is not None:
                done = st.total - sum(st.counts.get(s, 0) for s in ("pending", "sending", "retrying"))
                progress.update(bar, total=st.total if st.fanout_done else None, completed=done,
                                description="outcomes recorded")
                if st.settled:
                    break
            time.sleep(0.2)  # polling the store for a person watching, not synchronising a test
    return store.status(nid)  # with the failed devices, once


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-workers", is_flag=True, help="skip the queues and workers (before any is started)")
def doctor(as_json: bool, no_workers: bool) -> None:
    """Check configuration, credentials, services, provider endpoints, queues and workers."""
    from notifier.doctor import checks

    found = checks()
    if not no_workers and all(c.ok for c in found if c.name in ("configuration", "redis", "broker")):
        from workers.inspect import queue_checks  # the runtime's part: Celery, imported only here

        found += queue_checks(_settings())
    if as_json:
        click.echo(json.dumps({"ok": all(c.ok for c in found), "checks": [asdict(c) for c in found]}, indent=2))
    else:
        table = Table("check", "", "detail")
        for c in found:
            table.add_row(c.name, "[green]OK[/]" if c.ok else "[red]FAIL[/]", c.detail)
        Console(width=160).print(table)
    if not all(c.ok for c in found):
        sys.exit(1)


@main.command()
@click.option("--budget", default=60.0, show_default=True, help="seconds to spend; the next run carries on")
@click.option("--json", "as_json", is_flag=True)
def purge(budget: float, as_json: bool) -> None:
    """Delete outcomes past NOTIFIER_RETENTION_DAYS now (beat runs this every NOTIFIER_PURGE_INTERVAL)."""
    from notifier.retention import purge as run_purge

    store = _store()
    try:
        result = run_purge(store, _settings(), budget=budget)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(f"purged {result.notifications} notifications, {result.deliveries} delivery rows and "
               f"{result.removals} removal records in {result.statements} statements"
               + ("" if result.finished else " (budget spent: the next run goes on)"))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--restore", "restore_app", metavar="APP", help="put back the devices the sweep removed from APP")
@click.option("--since", metavar="WHEN", help="with --restore: an ISO time, or an age such as 90m, 6h or 2d")
def tokens(as_json: bool, restore_app: str | None, since: str | None) -> None:
    """Per app and platform: active, suppressed, swept and expired in the last day, held."""
    from notifier import tokens as admin

    if restore_app is not None and since is None:
        raise click.ClickException("--restore needs --since (an ISO time, or an age such as 6h)")
    store = _store()
    try:
        if restore_app is not None and since is not None:
            click.echo(f"restored {admin.restore(store, restore_app, _when(since))} devices of app {restore_app}")
        rows = admin.report(store)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    table = Table("app", "platform", "active", "suppressed", "held verdicts", "swept (1 day)", "expired (1 day)",
                  "held", "oldest unswept verdict")
    for r in rows:
        age = "" if r.oldest_unswept_verdict_seconds is None else f"{r.oldest_unswept_verdict_seconds / 60:.0f} min"
        table.add_row(r.app, r.platform, str(r.active), str(r.suppressed), str(r.held_verdicts), str(r.swept_last_day),
                      str(r.expired_last_day), "HELD" if r.held else "", age)
    Console().print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--users", default=5, show_default=True, help="users per channel")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), help="for the demo and its worker")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="keep keys, logs (demo.log, worker.log) and the registered devices here")
def demo(as_json: bool, users: int, log_level: str, workdir: Path | None) -> None:
    """Start the simulators and a worker, send, and count what the simulators received."""
    try:
        from harness.demo import run_demo
    except ImportError as exc:
        raise click.ClickException(f"the demo needs the simulators: pip install 'notifier[sim]' ({exc})") from None
    sys.exit(run_demo(as_json=as_json, users=users, log_level=log_level, workdir=workdir))


@main.command()
@click.option("--quick", is_flag=True, help="small sizes: a run under two minutes")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--devices", type=click.IntRange(30), help="devices per channel (full run: 100,000)")
@click.option("--large", type=click.IntRange(30), help="devices in the large APNs broadcast (full run: 1,000,000)")
@click.option("--naive", type=click.IntRange(1), help="devices the one-task-per-device baseline sends per channel")
@click.option("--samples", type=click.IntRange(1), help="transactional latency samples, idle and during the large run")
@click.option("--only", help="comma-separated runs: apns,fcm,webpush,mixed,large (default: all)")
@click.option("--hosts", type=click.IntRange(1, 8), default=1, show_default=True,
              help="start each pool this many times, as separate processes (as on that many hosts)")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="keep keys and worker logs here")
def bench(quick: bool, as_json: bool, devices: int | None, large: int | None, naive: int | None,
          samples: int | None, only: str | None, hosts: int, workdir: Path | None) -> None:
    """Throughput per channel beside its ceiling and a one-task-per-device baseline, worker
    memory and transactional latency, on the simulators with the Procfile's pools (README,
    Performance). A full run takes about half an hour."""
    try:
        from dataclasses import replace

        from harness.bench import RUNS, Sizes, apart, run_bench
    except ImportError as exc:
        raise click.ClickException(f"the bench needs the simulators: pip install 'notifier[sim]' ({exc})") from None
    sizes = Sizes.quick() if quick else Sizes.full()
    given = {k: v for k, v in {"devices": devices, "large": large, "naive": naive, "samples": samples}.items() if v}
    sizes = replace(sizes, **given)
    if sizes.large < sizes.devices:
        raise click.ClickException(f"--large ({sizes.large}) must be at least --devices ({sizes.devices})")
    runs = tuple(r.strip() for r in only.split(",")) if only else RUNS
    if unknown := set(runs) - set(RUNS):
        raise click.ClickException(f"--only: unknown run {', '.join(sorted(unknown))} (runs: {', '.join(RUNS)})")
    if (status := apart(sys.argv[1:])) is not None:  # the bench in a session of its own (harness.bench)
        sys.exit(status)
    sys.exit(run_bench(sizes, as_json=as_json, workdir=workdir, runs=runs, hosts=hosts))


if __name__ == "__main__":
    main()
