"""Redis and PostgreSQL for the demo and the tests: the configured ones when they answer,
throwaway instances (own port, own data directory) when they don't and the server
binaries are installed, and a clear error otherwise.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis


class ServiceUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(with_db(url, "postgres"), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _wait(check: object, what: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)  # polling a server coming up, not test synchronisation
    raise ServiceUnavailable(f"{what} did not come up within {deadline:.0f}s")


@dataclass
class Throwaway:
    """A server of our own (own port, own data directory) that tests may crash and restart."""

    url: str
    datadir: str
    start_cmd: list[str]
    stop_cmd: list[str] | None = None  # a server that daemonises (pg_ctl); else we hold the process
    crash_cmd: list[str] | None = None
    check: Callable[[], bool] = lambda: True
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Throwaway:
        if self.stop_cmd is None:
            self.proc = subprocess.Popen(self.start_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)  # a service: not in the bench's niced CPU group
        else:
            subprocess.run(self.start_cmd, check=True, capture_output=True, timeout=60)
        _wait(self.check, f"throwaway server at {self.url}")
        return self

    def crash(self) -> None:
        """Stop it the hard way: SIGKILL, or PostgreSQL's immediate shutdown (no checkpoint)."""
        if self.crash_cmd is not None:
            subprocess.run(self.crash_cmd, capture_output=True, timeout=60)
        elif self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.crash()
        self.start()

    def stop(self) -> None:
        if self.stop_cmd:
            subprocess.run(self.stop_cmd, capture_output=True, timeout=60)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_redis(appendonly: bool = False) -> Throwaway:
    """A Redis of our own; with ``appendonly`` every write is fsynced (nothing lost on a crash)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("Redis is not reachable and redis-server is not installed (apt-get install redis-server)")
    port, datadir = free_port(), tempfile.mkdtemp(prefix="notifier-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", datadir, "--save", ""]
    args += ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]
    url = f"redis://127.0.0.1:{port}/0"
    return Throwaway(url, datadir, args, check=lambda: redis_answers(url)).start()


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def start_postgres() -> Throwaway:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ServiceUnavailable("PostgreSQL is not reachable and its server binaries are not installed")
    port, datadir = free_port(), tempfile.mkdtemp(prefix="notifier-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(datadir, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, initdb, "-D", datadir, "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True, timeout=120)
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return Throwaway(
        url, datadir,
        start_cmd=[*as_user, pg_ctl, "-D", datadir, "-o", opts, "-l", f"{datadir}/log", "-w", "start"],
        stop_cmd=[*as_user, pg_ctl, "-D", datadir, "-m", "fast", "stop"],
        crash_cmd=[*as_user, pg_ctl, "-D", datadir, "-m", "immediate", "stop"],
        check=lambda: postgres_answers(url),
    ).start()


def ensure_services(redis_url: str, database_url: str, stack: ExitStack) -> tuple[str, str]:
    """The URLs to use: the configured servers, or throwaway ones stopped with ``stack``."""
    if not redis_answers(redis_url):
        tw = start_redis()
        stack.callback(tw.stop)
        redis_url = tw.url
    if not postgres_answers(database_url):
        tw = start_postgres()
        stack.callback(tw.stop)
        database_url = tw.url
    return redis_url, database_url


def scratch(stack: ExitStack, prefix: str) -> tuple[str, str]:
    """A fresh database (dropped with ``stack``) and an empty Redis db, on the configured
    servers ($REDIS_URL, $DATABASE_URL) or throwaway ones: (database URL, Redis URL).
    Raises ServiceUnavailable."""
    from notifier.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL

    redis_base, pg_server = ensure_services(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
                                            os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), stack)
    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
    database_url = create_database(pg_server, dbname)
    stack.callback(drop_database, pg_server, dbname)
    return database_url, free_redis_db(redis_base)


def create_database(server_url: str, dbname: str) -> str:
    with psycopg.connect(with_db(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    return with_db(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    with psycopg.connect(with_db(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def free_redis_db(url: str) -> str:
    """A URL for an empty Redis logical db on the same server (15 down to 1)."""
    for db in range(15, 0, -1):
        candidate = urlunsplit(urlsplit(url)._replace(path=f"/{db}"))
        client = redis.Redis.from_url(candidate)
        try:
            if client.dbsize() == 0:
                return candidate
        finally:
            client.close()
    raise ServiceUnavailable(f"no empty Redis db on {url}")


# -- RabbitMQ: the second broker -------------------------------------------------------

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def rabbitmq_answers(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # refused, reset, not AMQP: all mean "not here"
        return False


def _rabbitmqctl(node: str | None, *args: str) -> None:
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    cmd = [binary, *(["-n", node] if node else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ServiceUnavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[:300]}")


def start_rabbitmq() -> tuple[Throwaway, str]:
    """A RabbitMQ node of our own (own ports, own data directory); returns it and its name."""
    binary = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
    if not os.path.exists(binary):
        raise ServiceUnavailable("RabbitMQ is not reachable and rabbitmq-server is not installed "
                                 "(apt-get install rabbitmq-server)")
    port, dist, datadir = free_port(), free_port(), tempfile.mkdtemp(prefix="notifier-rabbitmq-")
    node = f"notifier{port}@localhost"
    plugins = os.path.join(datadir, "enabled_plugins")
    with open(plugins, "w") as f:
        f.write("[].\n")
    env = {**os.environ, "RABBITMQ_NODENAME": node, "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_DIST_PORT": str(dist),
           "RABBITMQ_MNESIA_BASE": datadir, "RABBITMQ_LOG_BASE": datadir, "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
           "RABBITMQ_PID_FILE": os.path.join(datadir, "pid")}
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    server = Throwaway(url, datadir, [binary], check=lambda: rabbitmq_answers(url))
    server.proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(server.check, f"throwaway RabbitMQ at {url}", deadline=90)
    return server, node


def rabbitmq_vhost(stack: ExitStack, base_url: str | None = None) -> str:
    """An empty virtual host on the configured RabbitMQ (``NOTIFIER_TEST_RABBITMQ_URL``,
    default 127.0.0.1:5672 guest/guest), or on a throwaway node when that doesn't answer;
    deleted with ``stack``. Returns its amqp:// URL."""
    url = base_url or os.environ.get("NOTIFIER_TEST_RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    node: str | None = None
    if not rabbitmq_answers(url):
        server, node = start_rabbitmq()
        stack.callback(server.stop)
        url = server.url
    vhost = f"notifier-{os.getpid()}-{free_port()}"
    _rabbitmqctl(node, "add_vhost", vhost)
    stack.callback(_rabbitmqctl, node, "delete_vhost", vhost)
    user = urlsplit(url).username or "guest"
    _rabbitmqctl(node, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    return urlunsplit(urlsplit(url)._replace(path="/" + vhost))
