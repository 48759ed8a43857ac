"""Prometheus metrics of one process, through the maintained client library (prometheus_client).

Every metric lives in the library's default registry, so one process exposes one set whatever
number of apps or pools it builds (tests build many: they compare values before and after).
Counters and histograms count what this process did; gauges say what it holds now. With
several processes (API servers, `assay worker`s) each one is scraped on its own and Prometheus
sums them (`sum by (route) (rate(assay_http_requests_total[5m]))`); the values taken from the
database at scrape time (items by state, projection lag) are the same in every process, so
aggregate those with `max`, not `sum`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "assay_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "assay_http_request_duration_seconds",
    "Time from a request's arrival to its answer, by method and route template",
    ["method", "route"],
)
APPENDS = Counter("assay_appends", "Append calls committed to the event log (units)")
EVENTS_APPENDED = Counter("assay_events_appended", "Events committed to the event log")
APPEND_BATCH_UNITS = Histogram(
    "assay_append_batch_units",
    "Append calls committed together in one transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ITEMS = Gauge(
    "assay_items", "Items by state in the read model (all organisations), at scrape", ["state"]
)
PROJECTION_LAG = Gauge(
    "assay_projection_lag_events",
    "Evaluation and item events in the log that the read models do not reflect yet, at scrape "
    "(inline projections keep it 0; more means the read models need a rebuild)",
)
WORKER_SLOTS = Gauge(
    "assay_worker_slots", "Item slots of this process's worker pools, busy or free", ["state"]
)
SANDBOX_START = Histogram(
    "assay_sandbox_start_seconds",
    "Time to provision an item's sandbox (services started, ready for the agent)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
# Set by the code that serves live streams (inc when one opens, dec when it closes).
LIVE_STREAMS = Gauge("assay_live_streams", "Server-sent event streams open in this process")
DB_UNAVAILABLE = Counter(
    "assay_database_unavailable",
    "Requests answered 503 because the database could not be reached",
)


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    # The route template, never the raw path: ids in paths would make a series per request.
    template = route or "unmatched"
    HTTP_REQUESTS.labels(method, template, str(status)).inc()
    HTTP_LATENCY.labels(method, template).observe(seconds)


def observe_batch(units: int, events: int) -> None:
    """One committed group-commit batch of `units` append calls holding `events` events."""
    APPENDS.inc(units)
    EVENTS_APPENDED.inc(events)
    APPEND_BATCH_UNITS.observe(units)


@contextmanager
def sandbox_start() -> Iterator[None]:
    """Times a sandbox's provisioning; only a successful start is observed."""
    started = time.perf_counter()
    yield
    SANDBOX_START.observe(time.perf_counter() - started)


class SlotHolder(Protocol):
    @property
    def busy_slots(self) -> int: ...

    @property
    def free_slots(self) -> int: ...


# The pools of this process that are started; read at scrape, so nothing needs updating.
_pools: weakref.WeakSet[SlotHolder] = weakref.WeakSet()
WORKER_SLOTS.labels("busy").set_function(lambda: sum(p.busy_slots for p in list(_pools)))
WORKER_SLOTS.labels("free").set_function(lambda: sum(p.free_slots for p in list(_pools)))


def track_pool(pool: SlotHolder) -> None:
    _pools.add(pool)


def untrack_pool(pool: SlotHolder) -> None:
    _pools.discard(pool)


def set_items_by_state(counts: dict[str, int], states: tuple[str, ...]) -> None:
    """Every known state gets a value (0 too), so a series does not vanish when it empties."""
    for state in states:
        ITEMS.labels(state).set(counts.get(state, 0))
