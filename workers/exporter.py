"""The metrics exporter: ``python -m workers.exporter [--host H] [--port 9464]`` (a Procfile process).

Serves ``/metrics`` for Prometheus: every worker process's counters and histograms,
summed from ``NOTIFIER_METRICS_DIR`` (``notifier/metrics.py``), and what is state rather
than a count, read at each scrape: queue depth and the oldest message's age per queue
(Redis broker; depth only on RabbitMQ), breakers open, notifications still fanning out.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import redis
from kombu import Connection
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from notifier.config import Settings, is_rabbitmq
from notifier.store import Store
from workers.breaker import open_breakers
from workers.queues import ALL_QUEUES

log = logging.getLogger(__name__)

# The header every task message carries from its publisher (workers.celery): its age.
SENT_AT = "notifier_sent_at"


class StateCollector(Collector):
    """Gauges read from Redis (or RabbitMQ) and PostgreSQL at each scrape."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=2)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("notifier_queue_depth", "Messages waiting in each queue", labels=["queue"])
        age = GaugeMetricFamily("notifier_queue_oldest_age_seconds", "Age of the oldest message in each queue",
                                labels=["queue"])
        try:
            self._queues(depth, age)
        except Exception as exc:  # a scrape must answer even when the broker does not
            log.warning("queue metrics unavailable: %s", type(exc).__name__)
        yield depth
        yield age
        breakers = GaugeMetricFamily("notifier_breaker_open", "1 while a circuit breaker parks its traffic",
                                     labels=["breaker"])
        try:
            for name in open_breakers(self.redis):
                breakers.add_metric([name], 1.0)
        except redis.RedisError as exc:
            log.warning("breaker metrics unavailable: %s", type(exc).__name__)
        yield breakers
        fanning = GaugeMetricFamily("notifier_notifications_fanning_out", "Notifications whose fan-out is not done")
        try:
            with self.store.pool.connection(timeout=2) as conn:
                row = conn.execute("SELECT count(*) FROM notifications WHERE fanout_done_at IS NULL"
                                   " AND (release_at IS NULL OR release_at <= now())").fetchone()
            fanning.add_metric([], float(row[0]) if row else 0.0)
        except Exception as exc:
            log.warning("fan-out metrics unavailable: %s", type(exc).__name__)
        yield fanning

    def _queues(self, depth: GaugeMetricFamily, age: GaugeMetricFamily) -> None:
        if is_rabbitmq(self.settings.broker_url):
            with Connection(self.settings.broker_url, connect_timeout=2) as conn:
                channel: Any = conn.default_channel  # an AMQP channel (kombu types it as StdChannel)
                for queue in ALL_QUEUES:
                    try:
                        declared = channel.queue_declare(queue, passive=True)
                    except Exception:  # not declared yet: nothing waits in it
                        depth.add_metric([queue], 0.0)
                        channel = conn.channel()
                        continue
                    depth.add_metric([queue], float(declared.message_count))
            return
        broker = redis.Redis.from_url(self.settings.broker_url, socket_timeout=2)
        try:
            now = time.time()
            for queue in ALL_QUEUES:
                depth.add_metric([queue], float(broker.llen(queue)))
                oldest = broker.lindex(queue, -1)  # kombu pushes on the left and pops on the right
                sent = _sent_at(oldest) if oldest else None
                age.add_metric([queue], max(0.0, now - sent) if sent else 0.0)
        finally:
            broker.close()


def _sent_at(raw: bytes | str) -> float | None:
    try:
        value = json.loads(raw).get("headers", {}).get(SENT_AT)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def registry(settings: Settings, store: Store) -> CollectorRegistry:
    reg = CollectorRegistry()
    if settings.metrics_dir is not None:
        settings.metrics_dir.mkdir(parents=True, exist_ok=True)
        MultiProcessCollector(reg, path=str(settings.metrics_dir))  # type: ignore[no-untyped-call]
    reg.register(StateCollector(settings, store))
    return reg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9464)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    settings = Settings.current()
    store = Store(settings.database_url, max_size=2)
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before the server's thread starts: it inherits the mask
    server, _thread = start_http_server(args.port, args.host, registry=registry(settings, store))
    log.info("serving /metrics on http://%s:%d (metrics from %s)", args.host, args.port, settings.metrics_dir)
    signal.sigwait(stop)
    server.shutdown()
    store.close()


if __name__ == "__main__":
    main()
