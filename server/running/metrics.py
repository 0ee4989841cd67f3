"""Prometheus metrics (``prometheus-client``), correct across several worker processes.

With several workers (``WORKERS`` > 1) prometheus-client runs in multiprocess mode: each worker
writes its samples to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and ``GET /metrics`` on
any worker adds up all of them (prometheus-client docs, "Multiprocess Mode"). That directory must
be set before ``prometheus_client`` is imported, so ``balance-api serve`` sets it up
(:func:`server.running.metrics_directory.multiprocess_directory`) before it imports the application.
With one worker, and no ``PROMETHEUS_MULTIPROC_DIR`` given, the plain in-memory values are used:
a multiprocess value checks the process id and writes a memory-mapped file on every update, which
py-spy found to be 8% of a worker's CPU on single transfers.

Process metrics: prometheus-client's process collector does not work in multiprocess mode, so each
worker copies its own readings into gauges labelled with its pid every ``METRICS_SAMPLE_INTERVAL``
seconds, together with its pool gauges; one worker does the same, so the series are the same.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from server.running.metrics_directory import MULTIPROC_ENV

if TYPE_CHECKING:
    import asyncpg

    from server.running.database import Database

# decided before prometheus_client is imported: see above
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.process_collector import ProcessCollector  # noqa: E402

if not MULTIPROCESS:  # the pid-labelled gauges below replace the default process collector's series
    from prometheus_client import PROCESS_COLLECTOR  # noqa: E402

    REGISTRY.unregister(PROCESS_COLLECTOR)

REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "http_request_duration_seconds", "Time from request received to response ready, by route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BALANCE_CHANGES = Counter(
    "balance_changes_total",
    "Balance changes (PATCH /api/balance, credits, debits) by outcome: applied, insufficient_funds, "
    "not_found, balance_overflow, idempotent_replay.",
    ["outcome"],
)

WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), failed (retried later), disabled (the last retry failed).",
    ["outcome"],
)
WEBHOOK_LAG_EVENTS = Gauge(
    "webhook_lag_events", "Final events after a webhook endpoint's cursor (counted up to 100,000), by endpoint id.",
    ["webhook"], multiprocess_mode="livemax",
)
WEBHOOK_LAG_SECONDS = Gauge(
    "webhook_lag_seconds", "Age of the oldest event a webhook endpoint has not got yet, by endpoint id.",
    ["webhook"], multiprocess_mode="livemax",
)


class LabelledChildren:
    """A metric's children by label values, looked up in a dict after the first time:
    prometheus-client's ``labels()`` checks and locks on every call (about 2% of the worker's CPU
    per request, py-spy). For metrics whose label values are few and bounded (methods, route
    templates, statuses, outcomes)."""

    def __init__(self, *metrics_):
        """``metrics_``: metrics with the same label names; ``of(*values)`` gives their children."""
        self._metrics = metrics_
        self._children: dict[tuple[str, ...], tuple] = {}

    def of(self, *values: str) -> tuple:
        children = self._children.get(values)
        if children is None:
            children = self._children[values] = tuple(metric.labels(*values) for metric in self._metrics)
        return children


_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_SIZE = Histogram(
    "balance_change_batch_size", "Balance changes per call sent by the batcher (BATCHING), in calls holding any.",
    buckets=_BATCH_BUCKETS)
TRANSFER_BATCH_SIZE = Histogram(
    "transfer_batch_size",
    "Transfers, holds, posts and voids per call sent by the batcher (BATCHING), in calls holding any.",
    buckets=_BATCH_BUCKETS)


def observe_batch(changes: int, transfers: int) -> None:
    """Count a call the batcher sent (``server.ledger.batching.LedgerBatcher``): how many balance
    changes and how many transfers, posts and voids it holds; a batch that mixes them counts in
    both histograms."""
    if changes:
        BATCH_SIZE.observe(changes)
    if transfers:
        TRANSFER_BATCH_SIZE.observe(transfers)
POOL_CONNECTIONS = Gauge("db_pool_connections", "Open connections in the asyncpg pools of all workers.",
                         multiprocess_mode="livesum")
POOL_IN_USE = Gauge("db_pool_connections_in_use", "Pool connections lent out to requests, all workers.",
                    multiprocess_mode="livesum")
POOL_MAX = Gauge("db_pool_max_connections", "Upper bound of the pools of all workers (DB_POOL_MAX_SIZE x workers).",
                 multiprocess_mode="livesum")
DB_PENDING = Gauge("db_pending_requests", "Requests holding or waiting for a pool connection, all workers.",
                   multiprocess_mode="livesum")
_PROCESS_GAUGES: dict[str, Gauge] = {}


def _process_gauge(name: str, documentation: str) -> Gauge:
    if name not in _PROCESS_GAUGES:
        if MULTIPROCESS:  # the multiprocess collector labels a "liveall" gauge with its pid
            _PROCESS_GAUGES[name] = Gauge(name, documentation, multiprocess_mode="liveall",
                                          registry=None)  # not the default registry: its process collector has these names
        else:
            _PROCESS_GAUGES[name] = Gauge(name, documentation, ["pid"])
    return _PROCESS_GAUGES[name]


def sample_process_metrics() -> None:
    """Copy this process's CPU, memory, file-descriptor and start-time readings into its gauges."""
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            gauge = _process_gauge(sample.name, family.documentation)
            (gauge if MULTIPROCESS else gauge.labels(str(os.getpid()))).set(sample.value)


def sample_worker_metrics(pool: asyncpg.Pool, database: Database) -> None:
    """Record this worker's pool gauges (open, in use, maximum; requests pending on
    ``database``) and its process gauges, now."""
    size = pool.get_size()
    POOL_CONNECTIONS.set(size)
    POOL_IN_USE.set(size - pool.get_idle_size())
    POOL_MAX.set(pool.get_max_size())
    DB_PENDING.set(database.pending)
    sample_process_metrics()


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of worker ``pid`` once it has exited (prometheus-client multiprocess docs)."""
    multiprocess.mark_process_dead(pid)


def exposition() -> tuple[bytes, str]:
    """The metrics of all workers in Prometheus text format, and its content type."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
