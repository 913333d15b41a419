"""``notifier bench``: throughput beside its ceiling, worker memory, transactional latency.

Everything runs on this machine: the simulators (in this process), real Redis and
PostgreSQL (the configured ones, or throwaway instances), and the Procfile's pools as
separate Celery worker processes with beat, started from the Procfile itself.

1. **Idle latency**: one-user notifications on the transactional lane, from
   ``notify.delay()`` to the simulator's receipt (a second APNs simulator, so its
   records are only these, in a process of its own: ``harness.txsim``). The call is made
   by an application process of its own too (``harness.txclient``), not by this one,
   whose simulator threads would hold it up.
2. **Per channel** (apns, fcm, webpush): a broadcast to ``devices`` devices of one
   platform (``everyone=<platform>``), from ``notify.delay()`` to every outcome recorded;
   with the **ceiling** on the same devices (``harness.ceiling``: one asyncio process,
   same channel code and client libraries, no Celery, Redis or PostgreSQL); then the
   **naive** baseline on ``naive`` devices (``harness.naive``: one Celery task per device,
   each a synchronous send).
3. **Mixed**: a broadcast to another app with a third of ``devices`` on each platform;
   its ceiling is the three ceiling processes running at once.
4. **Memory**: the largest worker process's peak RSS (VmHWM) after the per-channel runs,
   and again after
5. **a large broadcast** of ``large`` APNs devices, with transactional latency sampled
   while it runs.

Each broadcast's ceiling sends to half as many devices just before the broadcast and
again just after it (the first half by id, both times: ``Bench.around``), so that the
machine's drift over the broadcast's minutes falls on both alike.

Every broadcast is checked: the simulators must have accepted each device exactly once
and the pipeline must have recorded each as delivered, or ``ok`` is false (exit 1).

The simulators stand in for Apple's, Google's and the browsers' servers, which take none
of a deployment's CPU. On this machine they take a third of it, so the bench runs in a
session of its own and yields the CPU as the Procfile's broadcast pools do (autogroup
nice ``SIMULATORS_NICE``, ``workers.priority``): otherwise the transactional lane's
latency would measure how much a broadcast's push services slow it, not our pools.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.services import ServiceUnavailable, scratch
from harness.txclient import TxClient
from harness.txsim import TxSimulator
from harness.worker import ROOT, BeatProcess, WorkerProcess
from notifier.migrate import migrate
from simulators.apns import generate_signing_key
from simulators.apns_served import ServedApnsSimulator
from simulators.fcm import FcmSimulator
from simulators.tls import ca_path
from simulators.webpush import WebPushSimulator

APP, MIXED, TX = "bench", "mixed", "benchtx"
# The CPU priority of the bench's own process (the simulators, the ceiling processes):
# that of the Procfile's broadcast pools (module docstring).
SIMULATORS_NICE = 10
TEAM, KEY_ID, TOPIC = "BENCHTEAM1", "BENCHKEY01", "com.example.bench"
CHANNELS = ("apns", "fcm", "webpush")
TX_USERS = 10
VACUUM_EVERY = 60  # seconds, where the server's autovacuum is off


@dataclass(frozen=True)
class Sizes:
    devices: int  # per channel
    large: int  # the large APNs broadcast
    naive: int  # devices the naive baseline sends per channel
    samples: int  # latency samples, idle and during the large broadcast

    @classmethod
    def quick(cls) -> Sizes:
        return cls(devices=3_000, large=10_000, naive=300, samples=20)

    @classmethod
    def full(cls) -> Sizes:
        return cls(devices=100_000, large=1_000_000, naive=5_000, samples=100)


# -- the Procfile's pools ------------------------------------------------------------------

_POOL = re.compile(r"^(\w+):\s*(?:nice -n (\d+) )?celery -A workers worker -Q (\S+)\b.*"
                   r"--concurrency \$\{(\w+):-(\d+)\}")


@dataclass(frozen=True)
class Pool:
    queues: list[str]
    concurrency: int
    nice: int  # the CPU priority it yields to the others (``nice -n``)


def procfile_pools(procfile: Path = ROOT / "Procfile") -> dict[str, Pool]:
    """name -> pool for every worker line of the Procfile, its concurrency variables read
    from the environment as honcho would."""
    pools = {}
    for line in procfile.read_text().splitlines():
        if m := _POOL.match(line):
            pools[m[1]] = Pool(m[3].split(","), int(os.environ.get(m[4], m[5])), int(m[2] or 0))
    if not pools:
        raise RuntimeError(f"no worker pools found in {procfile}")
    return pools


def peak_rss_mb(processes: list[WorkerProcess]) -> float:
    """The largest peak resident size (VmHWM) of any process of these workers' sessions."""
    sessions = {p.proc.pid for p in processes if p.proc is not None}
    peak = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) not in sessions:  # the process group: each worker leads its own
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if m := re.search(r"^VmHWM:\s+(\d+) kB", status, re.M):
            peak = max(peak, int(m[1]))
    return round(peak / 1024, 1)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(workers: dict[str, WorkerProcess], sims: dict[str, Any]) -> dict[str, float]:
    """CPU seconds used so far, by part: each worker pool (its whole session), PostgreSQL's
    processes, Redis, and the simulators (this process's threads, and the process group of
    each simulator that runs in processes of its own). Two snapshots' difference says where
    a run's time went."""
    sessions = {p.proc.pid: name for name, p in workers.items() if p.proc is not None}
    sessions.update({group: "simulators" for sim in sims.values()
                     if (group := getattr(sim, "process_group", None)) is not None})
    me, used = os.getpid(), dict.fromkeys([*workers, "postgres", "redis", "simulators"], 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, fields = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICK
        pid, pgrp = int(text.split(" ", 1)[0]), int(fields[2])
        part = ("simulators" if pid == me else sessions.get(pgrp)
                or ("postgres" if comm.startswith("postgres") else "redis" if comm.startswith("redis") else None))
        if part is not None:
            used[part] += seconds
    return used


def cpu_ms_per_device(before: dict[str, float], after: dict[str, float], devices: int) -> dict[str, float]:
    spent = {k: (after[k] - before[k]) * 1000 / devices for k in after}
    return {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.001}


# -- set-up --------------------------------------------------------------------------------

def _write_apps(tmp: Path, apns: ServedApnsSimulator, apns_tx: TxSimulator, apns_key: str, fcm: FcmSimulator) -> None:
    from py_vapid import Vapid02

    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp / "vapid.pem"))
    (tmp / "apns.p8").write_text(apns_key)
    (tmp / "firebase.json").write_text(json.dumps(fcm.service_account_info()))

    def app(name: str, apns_url: str, *, others: bool) -> str:
        text = (f'[apps.{name}.apns]\ntopic = "{TOPIC}"\nkey_file = "apns.p8"\nkey_id = "{KEY_ID}"\n'
                f'team_id = "{TEAM}"\nendpoint = "{apns_url}"\n')
        if others:
            text += (f'[apps.{name}.fcm]\nservice_account_file = "firebase.json"\nendpoint = "{fcm.base_url}"\n'
                     f'[apps.{name}.webpush]\nvapid_private_key_file = "vapid.pem"\n'
                     'vapid_subject = "mailto:bench@example.com"\n')
        return text

    (tmp / "apps.toml").write_text(app(APP, apns.base_url, others=True) + app(MIXED, apns.base_url, others=True)
                                   + app(TX, apns_tx.base_url, others=False))


def _device_rows(platform: str, n: int, webpush: WebPushSimulator, prefix: str) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        user = f"{prefix}-{platform}-{i}"
        if platform == "apns":
            yield user, os.urandom(32).hex(), None, None
        elif platform == "fcm":
            yield user, "bench-" + os.urandom(24).hex(), None, None
        else:
            sub = webpush.subscribe()
            yield user, sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"]


def copy_devices(database_url: str, app: str, platform: str, rows: Iterator[tuple[Any, ...]]) -> None:
    """Load the bench's devices with COPY: set-up, not what is measured."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        with cur.copy("COPY devices (app, platform, user_id, token, p256dh, auth) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((app, platform, *row))


def _stand_in_for_autovacuum(database_url: str, stack: ExitStack) -> str:
    """Every send rewrites its delivery rows; a server with autovacuum off (this project's
    machine has it off) bloats them until a million-device run crawls. There, the bench
    vacuums the two tables every ``VACUUM_EVERY`` seconds itself, as autovacuum would
    (throttled by its cost delay), and says so in its result."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    if row is not None and row[0] == "on":
        return "on"
    stop = threading.Event()

    def vacuum() -> None:
        while not stop.wait(VACUUM_EVERY):
            with psycopg.connect(database_url, autocommit=True) as conn:
                # throttled as autovacuum is by default (2 ms of sleep per 200 cost units);
                # a manual VACUUM is not, and took PostgreSQL's CPU in bursts
                conn.execute("SET vacuum_cost_delay = '2ms'")
                conn.execute("VACUUM (ANALYZE) deliveries, devices")

    thread = threading.Thread(target=vacuum, name="bench-vacuum", daemon=True)
    thread.start()
    stack.callback(thread.join, 600)
    stack.callback(stop.set)
    return f"off on this server: the bench ran VACUUM (ANALYZE) on deliveries and devices every {VACUUM_EVERY} s"


# -- measurements ----------------------------------------------------------------------------

class Bench:
    def __init__(self, env: dict[str, str], sims: dict[str, Any], apns_tx: TxSimulator, sizes: Sizes,
                 workers: dict[str, WorkerProcess], console: Console, quiet: bool) -> None:
        from notifier.api import default_store

        self.env, self.sims, self.apns_tx, self.sizes, self.workers = env, sims, apns_tx, sizes, workers
        self.cpu: dict[str, float] = {}  # CPU ms per device of the last run, by part
        self.ceiling_cpu: dict[str, float] = {}
        self.retried: dict[str, int] = {}  # devices of the last broadcast sent more than once, by platform
        self.ceiling_failed = 0  # devices the last ceiling run did not deliver (it never retries)
        self.ceiling_halves: list[float] = []  # the last ceiling's devices per second before and after
        self.tenths: list[float | None] = []  # the last broadcast's devices per second in each tenth of its devices
        self.console, self.quiet = console, quiet
        self.store = default_store()
        self.tx_client: TxClient | None = None  # the application sending one-user notifications
        self.ok = True
        self.problems: list[str] = []

    def close(self) -> None:
        if self.tx_client is not None:
            self.tx_client.close()

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=self.console, disable=self.quiet, transient=True)

    def broadcast(self, app: str, everyone: Any, devices: int, label: str,
                  during: Callable[[], None] | None = None) -> float:
        """Send to every device of ``app`` (of one platform), wait for every outcome;
        return devices per second from ``notify.delay()`` to the last outcome recorded."""
        from workers import notify

        for sim in self.sims.values():  # the ceiling's first half sent to the same devices
            sim.reset()
        cpu = cpu_seconds(self.workers, self.sims)
        with self._progress() as progress:
            bar = progress.add_task(label, total=devices)
            start = time.perf_counter()
            nid = notify.delay(app, everyone=everyone, title="bench", body="Your order shipped. It arrives Thursday.",
                               data={"order": "A-1042"}).id
            deadline = time.monotonic() + 300 + devices / 50
            if during is not None:
                during()  # at least once while the broadcast is in flight
            # counting a large broadcast's outcomes is itself work for PostgreSQL: poll
            # it less often (the end is known to within the interval; 5 s of 15 minutes)
            interval = 0.2 if devices <= 20_000 else 2.0 if devices <= 200_000 else 5.0
            seen: list[tuple[float, int]] = [(0.0, 0)]  # (seconds, devices with an outcome)
            while True:
                polled, at = time.monotonic(), time.perf_counter() - start
                st = self.store.status(nid, failures=False)
                if st is not None:
                    done = sum(v for k, v in st.counts.items() if k not in ("pending", "sending", "retrying"))
                    seen.append((at, done))
                    progress.update(bar, completed=done)
                    if st.settled:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: not settled after {deadline:.0f} s")
                while time.monotonic() < polled + interval:
                    if during is not None:
                        during()
                    else:
                        time.sleep(0.2)  # polling the outcome table
            seconds = time.perf_counter() - start
        self.cpu = cpu_ms_per_device(cpu, cpu_seconds(self.workers, self.sims), devices)
        self.tenths = by_tenth(seen, devices)
        got = sum(s.delivered_count() for s in self.sims.values())
        unique = sum(s.unique_deliveries() for s in self.sims.values())
        recorded = st.counts.get("delivered", 0)
        with psycopg.connect(self.env["DATABASE_URL"]) as conn:
            self.retried = dict(conn.execute(  # type: ignore[arg-type]
                "SELECT platform, count(*) FROM deliveries WHERE notification_id = %s AND attempts > 1"
                " GROUP BY 1", (nid,)).fetchall())
        if not got == unique == recorded == devices:
            self.ok = False
            self.problems.append(f"{label}: {devices} devices, simulators accepted {got} ({unique} devices), "
                                 f"recorded delivered {recorded}")
        return devices / seconds

    def around(self, app: str, counts: dict[str, int], measure: Callable[[], float]) -> tuple[float, float]:
        """``measure()`` (a broadcast's devices per second) between the two halves of its
        ceiling, half of ``counts`` sent just before it and half again just after (the
        ceiling takes devices in id order, so both halves are the same devices); returns
        (what ``measure`` returned, the ceiling's devices per second over both halves).

        This machine's speed drifts by a tenth or more over a broadcast's minutes (run H: its
        ceiling 2,580/s before the million, 1,638/s after); halves on either side carry the
        same drift as the broadcast between them, where one measurement after it (as runs
        A-G did) carries all of it into the ratio."""
        first = self._ceiling(app, {p: n // 2 for p, n in counts.items()})
        measured = measure()
        second = self._ceiling(app, {p: n - n // 2 for p, n in counts.items()})
        sent, span = first["sent"] + second["sent"], first["span"] + second["span"]
        self.ceiling_failed = first["failed"] + second["failed"]
        self.ceiling_cpu = {part: round((first[part] + second[part]) * 1000 / sent, 3)
                            for part in ("ceiling", "simulators")}
        self.ceiling_halves = [round(first["sent"] / first["span"], 1), round(second["sent"] / second["span"], 1)]
        return measured, sent / span

    def _ceiling(self, app: str, counts: dict[str, int]) -> dict[str, Any]:
        """The ceiling processes, one per platform, started together: devices sent, the
        seconds from the first start to the last finish, devices not delivered, CPU seconds."""
        cpu = cpu_seconds({}, self.sims)["simulators"]
        procs = [subprocess.Popen([sys.executable, "-m", "harness.ceiling", "--app", app, "--platform", p,
                                   "--count", str(n)], env={**os.environ, **self.env}, cwd=ROOT,
                                  stdout=subprocess.PIPE) for p, n in counts.items() if n]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600 + sum(counts.values()) / 50)
            if proc.returncode:
                raise RuntimeError(f"the ceiling process failed (exit {proc.returncode})")
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        sent = sum(r["sent"] for r in results)
        return {"sent": sent, "span": max(r["finished"] for r in results) - min(r["started"] for r in results),
                "failed": sent - sum(r["outcomes"].get("Delivered", 0) for r in results),
                "ceiling": sum(r["cpu_s"] for r in results),
                "simulators": cpu_seconds({}, self.sims)["simulators"] - cpu}

    def naive(self, platform: str, n: int) -> float:
        """Devices per second with one Celery task per device (``harness.naive``), over
        ``n`` devices after one untimed warm-up task per pool process."""
        from harness import naive

        concurrency = procfile_pools()[platform].concurrency
        with psycopg.connect(self.env["DATABASE_URL"]) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM devices WHERE app = %s AND platform = %s"
                                              " ORDER BY id LIMIT %s", (APP, platform, n + concurrency))]
        sim = self.sims[platform]
        with WorkerProcess(self.env, app="harness.naive", queues=[naive.QUEUE], concurrency=concurrency,
                           loglevel="WARNING"):
            # one task per pool process first, untimed: the worker starts and opens its channels
            warm, ids = ids[:concurrency], ids[concurrency:]
            before = sim.delivered_count()
            for device_id in warm:
                naive.send_one.delay(APP, device_id)
            sim.wait_delivered(before + len(warm), timeout=120)
            before = sim.delivered_count()
            start = time.time()
            for device_id in ids:
                naive.send_one.delay(APP, device_id)
            last = sim.wait_delivered(before + len(ids), timeout=120 + len(ids) / 10)
            return len(ids) / (last - start)

    def wait_for_pools(self, timeout: float = 120) -> None:
        """Until every pool's worker answers a ping: its processes are forked and consuming."""
        from workers import app as celery_app

        names = {w.name.replace("%h", socket.gethostname()) for w in self.workers.values()}
        deadline = time.monotonic() + timeout
        while names:
            for reply in celery_app.control.ping(destination=sorted(names), timeout=1.0):
                names -= set(reply)
            if names and time.monotonic() > deadline:
                raise RuntimeError(f"these workers did not start within {timeout:.0f} s: {sorted(names)}")

    def latency_sample(self, i: int) -> float:
        """One one-user notification on the transactional lane: ms from ``notify.delay()``
        (in the application's process) to the simulator's receipt."""
        if self.tx_client is None:
            self.tx_client = TxClient(TX)
        seen = len(self.apns_tx.received)
        start, _ = self.tx_client.notify(f"tx-{i % TX_USERS}")
        return (self.apns_tx.wait_for_receipt(seen, timeout=60) - start) * 1000

    def latency_idle(self) -> list[float]:
        self.wait_for_pools()  # a pool still starting is not idle: its imports take the CPU
        for i in range(4):  # each pool process opens its connection: not counted
            self.latency_sample(i)
        return [self.latency_sample(i) for i in range(self.sizes.samples)]


def by_tenth(seen: list[tuple[float, int]], devices: int) -> list[float | None]:
    """Devices per second over each tenth of a broadcast's devices, from its progress polls
    ((seconds since ``notify.delay()``, devices done when the poll began), in order, the
    first (0.0, 0)); each tenth's end is interpolated between the last poll short of it and
    the first that reached it, the first tenth starting at 0.0. None for a tenth the polls
    never saw finish. Whether a broadcast slows as its tables grow, or the machine drifts
    under it."""
    def when(n: float) -> float | None:
        if n <= 0:
            return 0.0
        for (t0, d0), (t1, d1) in itertools.pairwise(seen):
            if d1 >= n:  # and d0 < n: the polls are in order and the first did not reach n
                return t0 + (t1 - t0) * (n - d0) / (d1 - d0)
        return None

    marks = [when(devices * i / 10) for i in range(11)]
    return [round(devices / 10 / (b - a), 1) if a is not None and b is not None and b > a else None
            for a, b in itertools.pairwise(marks)]


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    cuts = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 1 else samples * 99
    return {"n": len(samples), "p50": round(cuts[49], 1), "p99": round(cuts[98], 1), "max": round(max(samples), 1)}


RUNS = (*CHANNELS, "mixed", "large")


def apart(argv: list[str]) -> int | None:
    """Where the kernel shares the CPU between sessions first (autogroup scheduling) and
    this process shares its session (a terminal's), run ``notifier ARGV`` again in a
    session of its own and return its exit status (128 + N when signal N ended it); None
    where this one may go on. ^C is passed on, SIGTERM and SIGHUP as SIGTERM; the run ends with
    this process (``PR_SET_PDEATHSIG``), whatever ends it."""
    from workers.priority import autogroup_enabled

    if os.getsid(0) == os.getpid() or not autogroup_enabled():
        return None
    child = subprocess.Popen([sys.executable, "-m", "notifier.cli", *argv], start_new_session=True,
                             preexec_fn=_end_with_parent)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: child.send_signal(signal.SIGTERM))
    while True:
        try:
            status = child.wait()
            return 128 - status if status < 0 else status
        except KeyboardInterrupt:  # a terminal's ^C reaches only its session: pass it on
            child.send_signal(signal.SIGINT)


def _end_with_parent() -> None:
    """In the re-run bench, before it starts: SIGTERM when the process that started it ends."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _yield_cpu() -> str:
    """This session's autogroup at ``SIMULATORS_NICE``, when it is ours alone (``apart``)."""
    from workers.priority import autogroup_enabled, group_nice

    if not autogroup_enabled():
        return "no autogroup scheduling on this kernel: nice 0"
    if os.getsid(0) != os.getpid():
        return "not in a session of its own: nice 0"
    if not group_nice(SIMULATORS_NICE):
        return "nice 0 (the autogroup kept its priority)"
    return f"nice {SIMULATORS_NICE}, as the broadcast pools"


def run_bench(sizes: Sizes, *, as_json: bool = False, workdir: Path | None = None, runs: tuple[str, ...] = RUNS,
              hosts: int = 1) -> int:
    """The whole bench, or only ``runs`` of it (the JSON object then lacks the others).

    ``hosts``: each of the Procfile's pools started that many times, as separate worker
    processes with their own Redis and PostgreSQL connections, as on that many hosts."""
    if threading.current_thread() is threading.main_thread():  # SIGTERM (from apart) stops the pools too
        signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    console = Console(stderr=True)
    quiet = as_json or not console.is_terminal
    tmp = workdir or Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        if not as_json:
            console.print(text)

    with ExitStack() as stack:
        try:
            database_url, redis_url = scratch(stack, "notifier_bench")
        except ServiceUnavailable as exc:
            console.print(f"[red]cannot run the bench:[/] {exc}")
            return 2
        apns_key, apns_public = generate_signing_key()
        sims: dict[str, Any] = {
            "apns": stack.enter_context(ServedApnsSimulator(TEAM, {KEY_ID: apns_public})),
            "fcm": stack.enter_context(FcmSimulator(project_id="notifier-bench")),
            "webpush": stack.enter_context(WebPushSimulator()),
        }
        (tmp / "apns-public.pem").write_text(apns_public)
        apns_tx = TxSimulator(TEAM, KEY_ID, tmp / "apns-public.pem")  # a process of its own
        stack.callback(apns_tx.close)
        _write_apps(tmp, sims["apns"], apns_tx, apns_key, sims["fcm"])
        (tmp / "ca.pem").write_text(Path(ca_path()).read_text() + apns_tx.ca_file.read_text())  # both CAs
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "NOTIFIER_APPS": str(tmp / "apps.toml"),
               "NOTIFIER_CA_BUNDLE": str(tmp / "ca.pem"), "NOTIFIER_WEBPUSH_ORIGINS": sims["webpush"].base_url,
               "NOTIFIER_METRICS_DIR": str(tmp / "metrics")}
        os.environ.update(env)
        migrate(database_url)
        autovacuum = _stand_in_for_autovacuum(database_url, stack)
        simulators_cpu = _yield_cpu()

        say(f"loading devices: {sizes.devices:,} per channel, {sizes.devices:,} mixed, {sizes.large:,} APNs")
        for platform in CHANNELS:
            copy_devices(database_url, APP, platform, _device_rows(platform, sizes.devices, sims["webpush"], APP))
            copy_devices(database_url, MIXED, platform,
                         _device_rows(platform, sizes.devices // 3, sims["webpush"], MIXED))
        copy_devices(database_url, TX, "apns", _device_rows("apns", TX_USERS, sims["webpush"], "tx"))
        with psycopg.connect(database_url, autocommit=True) as conn:  # tx users are tx-0 … tx-9
            conn.execute("UPDATE devices SET user_id = 'tx-' || split_part(user_id, '-', 3) WHERE app = %s", (TX,))
            conn.execute("ANALYZE")

        from workers import app as celery_app

        stack.callback(lambda: celery_app.connection_for_write().default_channel.client.flushdb())
        pools = procfile_pools()
        workers = {f"{name}{'' if h == 0 else h + 1}": stack.enter_context(WorkerProcess(
                       env, queues=pool.queues, concurrency=pool.concurrency, nice=pool.nice, loglevel="WARNING",
                       log_path=tmp / f"{name}-{h + 1}.log"))
                   for h in range(hosts) for name, pool in pools.items()}
        stack.enter_context(BeatProcess(env, log_path=tmp / "beat.log"))
        say("pools (from the Procfile): " + ", ".join(f"{k} ×{p.concurrency}" + (f" (nice {p.nice})" if p.nice else "")
                                                      for k, p in pools.items())
            + (f", each on {hosts} hosts" if hosts > 1 else ""))

        bench = Bench(env, sims, apns_tx, sizes, workers, console, quiet)
        stack.callback(bench.close)
        idle = bench.latency_idle()
        say(f"transactional latency, idle: {percentiles(idle)}")
        channels: dict[str, dict[str, Any]] = {}
        for platform in (c for c in CHANNELS if c in runs):
            per_s, ceiling = bench.around(APP, {platform: sizes.devices}, functools.partial(
                bench.broadcast, APP, platform, sizes.devices, f"{platform} broadcast"))
            cpu = bench.cpu
            naive = bench.naive(platform, sizes.naive)
            channels[platform] = _row(sizes.devices, per_s, ceiling, naive, bench, cpu)
            say(f"{platform}: {channels[platform]}")
            sims[platform].reset()
        third = sizes.devices // 3
        if "mixed" in runs:
            mixed, ceiling = bench.around(MIXED, dict.fromkeys(CHANNELS, third),
                                          lambda: bench.broadcast(MIXED, True, third * 3, "mixed broadcast"))
            channels["mixed"] = _row(third * 3, mixed, ceiling, None, bench, bench.cpu)
            say(f"mixed: {channels['mixed']}")
        rss_small = peak_rss_mb(list(workers.values()))
        for sim in sims.values():
            sim.reset()

        result: dict[str, Any] = {
            "ok": bench.ok, "problems": bench.problems,
            "postgres": {"autovacuum": autovacuum}, "simulators": {"cpu": simulators_cpu},
            "sizes": {"devices_per_channel": sizes.devices, "large": sizes.large, "naive": sizes.naive,
                      "cores": os.cpu_count(), "pools": {k: p.concurrency for k, p in pools.items()},
                      "nice": {k: p.nice for k, p in pools.items() if p.nice},
                      "hosts": hosts},
            "channels": channels, "rss_mb": {"100k": rss_small},
            "latency_ms": {"idle": percentiles(idle)},
        }
        if "large" in runs:
            result["large"] = _large(bench, database_url, sizes)
            result["latency_ms"]["during_broadcast"] = result["large"].pop("latency_ms")
            result["rss_mb"]["1m"] = peak_rss_mb(list(workers.values()))
        result["ok"] = bench.ok
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            _print(result)
        return 0 if bench.ok else 1


def _large(bench: Bench, database_url: str, sizes: Sizes) -> dict[str, Any]:
    """The large APNs broadcast, with transactional latency sampled while it runs; its
    ceiling on half of ``devices`` of its devices before it and again after it (Bench.around)."""
    copy_devices(database_url, APP, "apns", _device_rows("apns", sizes.large - sizes.devices, bench.sims["webpush"],
                                                         "large"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE devices")
    during: list[float] = []
    paced = [time.monotonic()]

    def sample() -> None:
        if len(during) < sizes.samples and time.monotonic() >= paced[0]:
            during.append(bench.latency_sample(len(during)))
            paced[0] = time.monotonic() + 0.25
        else:
            time.sleep(0.2)

    large, ceiling = bench.around(APP, {"apns": sizes.devices}, lambda: bench.broadcast(
        APP, "apns", sizes.large, "large APNs broadcast", during=sample))
    return {**_row(sizes.large, large, ceiling, None, bench, bench.cpu), "per_s_by_tenth": bench.tenths,
            "latency_ms": percentiles(during)}


def _row(devices: int, per_s: float, ceiling: float, naive: float | None, bench: Bench | None = None,
         cpu: dict[str, float] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"devices": devices, "per_s": round(per_s, 1),
                           "ceiling_per_s": round(ceiling, 1), "ratio": round(per_s / ceiling, 2),
                           "naive_per_s": None if naive is None else round(naive, 1)}
    if bench is not None:
        # where the CPU went, per device: the pipeline's parts, and the ceiling's
        row["ceiling_before_after"] = bench.ceiling_halves  # devices/s of each half (Bench.around)
        row["ceiling_failed"] = bench.ceiling_failed
        row["retried"] = bench.retried
        row["cpu_ms_per_device"] = {"pipeline": cpu, "ceiling": bench.ceiling_cpu}
    return row


def _print(result: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="notifier bench: devices per second, notify.delay() to every outcome recorded")
    for col in ("run", "devices", "notifier /s", "ceiling /s", "ratio", "naive /s"):
        table.add_column(col, justify="right")
    rows = {**result["channels"], **({"large apns": result["large"]} if "large" in result else {})}
    for name, r in rows.items():
        table.add_row(name, f"{r['devices']:,}", f"{r['per_s']:,.0f}", f"{r['ceiling_per_s']:,.0f}",
                      f"{r['ratio']:.2f}", "" if r["naive_per_s"] is None else f"{r['naive_per_s']:,.0f}")
    console.print(table)
    console.print("ceiling /s over the half sent before the broadcast / the half sent after: "
                  + ", ".join(f"{name} {r['ceiling_before_after'][0]:,.0f} / {r['ceiling_before_after'][1]:,.0f}"
                              for name, r in rows.items()))
    if "large" in result:
        console.print("large apns, devices/s by tenth of its devices: "
                      + ", ".join("-" if r is None else f"{r:,.0f}" for r in result["large"]["per_s_by_tenth"]))
    lat = result["latency_ms"]
    console.print(f"worker peak RSS: {result['rss_mb']['100k']} MB after the per-channel runs, "
                  f"{result['rss_mb'].get('1m')} MB after the large broadcast")
    console.print(f"transactional latency ms: idle {lat['idle']}, during the large broadcast "
                  f"{lat.get('during_broadcast')}")
    for problem in result["problems"]:
        console.print(f"[red]{problem}[/]")
    console.print("[green]ok[/]" if result["ok"] else "[red]NOT ok[/]")
