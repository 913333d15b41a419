"""Prometheus metrics, correct under Celery's prefork pool.

Each worker process writes its counters and histograms to files in one directory
(prometheus-client's multiprocess mode, ``NOTIFIER_METRICS_DIR``); the exporter
(``python -m workers.exporter``, a Procfile process) sums every process's files on each
scrape, dead processes' included, so a counter never goes back when a pool child is
replaced. What is state rather than a count (queue depths, breakers, fan-outs in
progress) is read by the exporter at scrape time, not kept here.

prometheus-client picks its value store (in memory, or files) when it is imported,
from ``PROMETHEUS_MULTIPROC_DIR``. Settings are read at first use, never at import, so
the metrics are made on first use too: ``_metrics()`` sets that variable from the
settings and re-picks the value store before it creates them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from notifier.config import Settings

# Provider answers take milliseconds on a good day and the send timeout (10 s) on a bad one.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class _Metrics:
    sends: Any
    retries: Any
    latency: Any
    verdicts: Any
    swept: Any


@functools.cache
def _metrics() -> _Metrics:
    directory = Settings.current().metrics_dir
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import Counter, Histogram, values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # files when the directory is set
    return _Metrics(
        sends=Counter("notifier_sends_total", "Delivery outcomes recorded, by app, channel and outcome",
                      ["app", "channel", "outcome"]),
        retries=Counter("notifier_retries_total", "Sends that will be tried again (throttled, 5xx, timeouts)",
                        ["app", "channel"]),
        latency=Histogram("notifier_provider_latency_seconds", "Time from request to the provider's answer",
                          ["channel"], buckets=LATENCY_BUCKETS),
        verdicts=Counter("notifier_dead_tokens_total", "Tokens a provider declared dead (kind=dead) or held",
                         ["app", "channel", "kind"]),
        swept=Counter("notifier_tokens_swept_total", "Devices the sweep removed, by cause (dead, inactive)",
                      ["app", "cause"]),
    )


def recorded(app: str, channel: str, statuses: Iterable[str]) -> None:
    """Outcomes written to the store for one batch (only those written: a lost claim's are not)."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    m = _metrics()
    for status, n in counts.items():
        m.sends.labels(app, channel, status).inc(n)
        if status == "retrying":
            m.retries.labels(app, channel).inc(n)


def verdicts(app: str, channel: str, kind: str, n: int) -> None:
    if n:
        _metrics().verdicts.labels(app, channel, kind).inc(n)


def answered(channel: str, seconds: float) -> None:
    _metrics().latency.labels(channel).observe(seconds)


def swept(app: str, cause: str, n: int) -> None:
    if n:
        _metrics().swept.labels(app, cause).inc(n)
