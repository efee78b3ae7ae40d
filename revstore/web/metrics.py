"""``/metrics``: the table and every worker's sync, in Prometheus' text format.

Exposition is prometheus_client's, as in Flower.  A scrape costs one
``revstore_status`` broadcast and two cheap reads of the table, whatever
its size, and both are cached (:data:`WORKERS_SECONDS`), so several
Prometheus servers, or a dashboard refreshing fast, cost no more:

* the clock's version: one row by primary key;
* the next expiry: a ``min()`` answered by one descent of the ``expires_at`` index;
* the counts by kind, tombstones and expired rows need a scan of the table
  (0.2 s at a million rows on PostgreSQL, more on a busy server), so a
  scrape never waits for one: they are counted once when the console first
  serves ``/metrics``, then again in the background at most every
  :data:`COUNTS_SECONDS`, and ``revstore_table_counts_age_seconds`` says how
  old they are.

Worker metrics carry a ``worker`` label (the node name); a worker that does
not answer within the broadcast's timeout is absent from that scrape, which
``revstore_workers_replying`` and an ``absent()`` alert catch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from ..config import mask_url
from ..errors import RevstoreError
from ..schema import KINDS
from ..queries import OperatorQueries
from ..health import worker_status

logger = logging.getLogger("revstore.web")

#: Worker replies and the cheap table reads are reused for this long: one broadcast per interval at most.
WORKERS_SECONDS = 5.0
#: The counts scan the table: at most once per this many seconds.
COUNTS_SECONDS = 60.0
#: How long a scrape waits for workers' replies.
BROADCAST_TIMEOUT = 1.5

#: Per-worker gauges: (metric name, help, how to read it from a fleet entry).
WORKER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("revstore_worker_loaded", "1 once the worker holds the table's revocations in memory.", "loaded"),
    ("revstore_worker_healthy", "1 when the console sees no problem with this worker (the fleet page's verdict).",
     "healthy"),
    ("revstore_worker_lag_versions", "Versions the worker's marker is behind the table's clock.", "lag"),
    ("revstore_worker_lag_seconds", "How stale the worker's view may be: 0 when caught up, else seconds since its "
     "last successful sync.", "lag_seconds"),
    ("revstore_worker_last_sync_age_seconds", "Seconds since the worker last pulled changes successfully.",
     "seconds_since_last_sync"),
    ("revstore_worker_listener_live", "1 while the worker hears LISTEN/NOTIFY wake-ups (PostgreSQL).",
     "listener_live"),
    ("revstore_worker_poll_interval_seconds", "Seconds between the worker's polls of the table.", "poll_interval"),
    ("revstore_worker_spool_records", "Revokes in the worker's spool that are not committed yet.", "spool_records"),
    ("revstore_worker_spool_bytes", "Size of the worker's spool file.", "spool_bytes"),
    ("revstore_worker_snapshot_age_seconds", "Seconds since the worker's local snapshot was last written.",
     "snapshot_file_age"),
    ("revstore_worker_from_snapshot", "1 while the worker runs on its local snapshot (database down since start).",
     "from_snapshot"),
    ("revstore_worker_revocations", "Revocations the worker holds in memory.", "revoked_in_memory"),
    ("revstore_worker_pending_writes", "Revocations the worker heard and has not written to the table yet.",
     "pending_writes"),
)
#: Per-worker counters (prometheus_client adds ``_total``).
WORKER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("revstore_worker_commits", "Write-through transactions the worker committed.", "commits"),
    ("revstore_worker_commit_failures", "Database failures while the worker had writes queued.", "commit_failures"),
    ("revstore_worker_polls", "Successful pulls of changes from the table.", "polls"),
    ("revstore_worker_reloads", "Full reloads of the table (at start, or after missing cleaned-up un-revokes).",
     "reloads"),
)


def _number(value: Any) -> float | None:
    """A status field as a sample value; None (left out) when the worker does not report it."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


class RevstoreCollector(Collector):
    """Collects on each scrape from the store and, with a Celery app, the workers."""

    def __init__(self, store: OperatorQueries, celery_app: Any = None) -> None:
        self.store = store
        self.celery_app = celery_app
        self._lock = threading.Lock()
        self._fresh_at = float("-inf")
        self._counts_at = float("-inf")
        self._table: dict[str, Any] = {}
        self._counts: dict[str, Any] | None = None
        self._counting = False
        self._workers: list[dict[str, Any]] = []
        self._database_up = False

    def _refresh(self) -> None:
        """Read the table and ask the workers, unless the last answers are recent enough."""
        now = time.monotonic()
        if now - self._fresh_at < WORKERS_SECONDS:
            return
        version: int | None = None
        try:
            version = self.store.current_version()
            self._table = {"version": version, "next_expiry": self.store.next_expiry()}
            if self._counts is None:
                self._counts, self._counts_at = self.store.stats(), time.monotonic()
            elif now - self._counts_at >= COUNTS_SECONDS and not self._counting:
                self._counting = True
                threading.Thread(target=self._count, name="revstore-metrics-counts", daemon=True).start()
            self._database_up = True
        except (RevstoreError, SQLAlchemyError) as exc:
            logger.warning("revstore console: /metrics cannot read the table: %s", str(exc).splitlines()[0])
            self._database_up, self._table = False, {}
        if self.celery_app is not None:
            try:
                self._workers = worker_status(self.celery_app, version, BROADCAST_TIMEOUT)
            except Exception as exc:  # the broker is down: the table's metrics still count
                logger.warning("revstore console: /metrics cannot ask the workers: %s",
                               mask_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                self._workers = []
        self._fresh_at = time.monotonic()

    def _count(self) -> None:
        """Refresh the counts off the scrape's path (they scan the table)."""
        try:
            counts = self.store.stats()
        except (RevstoreError, SQLAlchemyError) as exc:
            logger.warning("revstore console: /metrics cannot count the table: %s", str(exc).splitlines()[0])
            counts = None
        with self._lock:
            if counts is not None:
                self._counts, self._counts_at = counts, time.monotonic()
            self._counting = False

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes share one broadcast
            self._refresh()
            table, counts, workers = dict(self._table), self._counts, list(self._workers)
            counts_age, database_up = time.monotonic() - self._counts_at, self._database_up
        yield GaugeMetricFamily("revstore_database_up", "1 when the console could read the table.",
                                value=1.0 if database_up else 0.0)
        yield from self._table_metrics(table, counts, counts_age)
        if self.celery_app is not None:
            yield GaugeMetricFamily("revstore_workers_replying", "Workers that answered revstore_status in time.",
                                    value=float(len(workers)))
            yield from self._worker_metrics(workers)

    def _table_metrics(self, table: dict[str, Any], counts: dict[str, Any] | None,
                       counts_age: float) -> Iterator[Metric]:
        if "version" in table:
            yield GaugeMetricFamily("revstore_table_version", "The table's clock: the last version handed out.",
                                    value=float(table["version"]))
        if table.get("next_expiry") is not None:
            yield GaugeMetricFamily("revstore_table_next_expiry_seconds",
                                    "Seconds until the soonest active revocation expires.",
                                    value=float(table["next_expiry"]))
        if counts is None:
            return
        live = GaugeMetricFamily("revstore_table_revocations", "Active, unexpired revocations by kind.",
                                 labels=["kind"])
        for kind in KINDS:
            live.add_metric([kind], float(counts["active"].get(kind, 0)))
        yield live
        for name, key, help_ in (
            ("revstore_table_terminating", "terminate", "Active revocations that also terminate a running task."),
            ("revstore_table_tombstones", "tombstones", "Un-revoke tombstones awaiting cleanup."),
            ("revstore_table_expired_awaiting_cleanup", "expired_awaiting_cleanup",
             "Expired revocations the cleanup has not deleted yet."),
        ):
            yield GaugeMetricFamily(name, help_, value=float(counts[key]))
        yield GaugeMetricFamily("revstore_table_counts_age_seconds",
                                "Age of the row counts (refreshed at most every minute: they scan the table).",
                                value=counts_age)

    def _worker_metrics(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        info = GaugeMetricFamily("revstore_worker_info", "One per replying worker, with its revstore release.",
                                 labels=["worker", "release"])
        for w in workers:
            info.add_metric([w["node"], str(w.get("release", "unknown"))], 1.0)
        yield info
        rows = [{**w, "healthy": w.get("problem") is None} for w in workers]
        for specs, family_type in ((WORKER_GAUGES, GaugeMetricFamily), (WORKER_COUNTERS, CounterMetricFamily)):
            for name, help_, key in specs:
                family = family_type(name, help_, labels=["worker"])
                for w in rows:
                    value = _number(w.get(key))
                    if value is not None:
                        family.add_metric([w["node"]], value)
                yield family


def metrics_registry(store: OperatorQueries, celery_app: Any = None) -> CollectorRegistry:
    """A registry of the console's own (not the process-global one: two consoles in a process stay apart)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RevstoreCollector(store, celery_app))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The scrape's body; blocks on the broadcast, so the console calls it in a thread."""
    return generate_latest(registry)
