"""Cleanup: deleting a million expired rows, and what writers feel meanwhile.

``store.purge_expired`` runs with the default batch, as a worker's cleanup
does (in its own thread here, timed end to end); every SQL statement it runs
is timed through SQLAlchemy's cursor events, and a writer revokes one id
every few milliseconds throughout, so "never stalls writers" is measured,
not assumed.  Stock's counterpart is ``LimitedSet.purge`` dropping the same
number of expired ids from memory (it has nothing on disk to clean).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from celery.utils.collections import LimitedSet
from sqlalchemy import event

from bench.common import MILLION, Figure, fresh_store, log, main, percentile, seed, task_id
from revstore.config import DEFAULT_CLEANUP_BATCH
from revstore.store import RevocationStore

NAME = "cleanup"
TITLE = "Cleanup of expired rows"
ROWS, QUICK_ROWS = MILLION, 20_000
#: a statement this long would make a writer wait noticeably
TARGET_STATEMENT_MS = 100.0


class StatementTimer:
    """Durations of every statement an engine runs, via cursor events."""

    def __init__(self, store: RevocationStore) -> None:
        self.durations: list[float] = []
        self._engine = store.engine
        event.listen(self._engine, "before_cursor_execute", self._before)
        event.listen(self._engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn: Any, *_: Any) -> None:
        self.durations.append(time.perf_counter() - conn.info.pop("bench_started"))

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._before)
        event.remove(self._engine, "after_cursor_execute", self._after)


def writer(store: RevocationStore, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """Revoke one fresh id at a time until ``stop``: (when it started, how long it took)."""
    while not stop.is_set():
        started = time.perf_counter()
        store.add([str(uuid.uuid4())])
        out.append((started, time.perf_counter() - started))
        time.sleep(0.005)


def stock_purge_rate(count: int) -> float:
    """Ids/s LimitedSet.purge drops when ``count`` ids have all expired."""
    revoked = LimitedSet(maxlen=0, expires=10800)
    revoked.update([task_id(i) for i in range(count)])
    started = time.perf_counter()
    revoked.purge(now=time.monotonic() + 10801)
    assert not revoked
    return count / (time.perf_counter() - started)


def timed_purge(store: RevocationStore) -> tuple[int, float, float, list[float], list[float]]:
    """Purge ``store`` as a worker would while a writer revokes: rows, seconds, longest statement (ms),
    and the writer's revoke times before and during the purge."""
    writes: list[tuple[float, float]] = []
    stop = threading.Event()
    # the writer has its own engine, so the timer sees the cleanup's statements only
    writer_store = RevocationStore(store.url, schema=store.tables.schema)
    thread = threading.Thread(target=writer, args=(writer_store, stop, writes))
    thread.start()
    time.sleep(1.0)
    timer = StatementTimer(store)
    started = time.perf_counter()
    deleted = store.purge_expired(DEFAULT_CLEANUP_BATCH)
    elapsed = time.perf_counter() - started
    timer.close()
    stop.set()
    thread.join()
    writer_store.dispose()
    before = [took for at, took in writes if at < started]
    during = [took for at, took in writes if started <= at < started + elapsed]
    return deleted, elapsed, max(timer.durations) * 1000, before, during


def run(quick: bool = False) -> list[Figure]:
    rows = QUICK_ROWS if quick else ROWS
    with fresh_store() as store:
        seed(store, rows, expired=True)
        deleted, elapsed, longest, before, during = timed_purge(store)
    assert deleted == rows, (deleted, rows)
    stock = stock_purge_rate(rows)
    log(f"cleanup: {deleted:,} rows in {elapsed:.1f}s; longest statement {longest:.0f} ms")
    return [
        Figure(NAME, f"delete {rows:,} expired rows", deleted / elapsed, "rows/s", stock,
               note=f"batches of {DEFAULT_CLEANUP_BATCH:,}; stock: LimitedSet.purge in memory"),
        Figure(NAME, "longest single cleanup statement", longest, "ms", target=f"≤ {TARGET_STATEMENT_MS:.0f} ms",
               met=longest <= TARGET_STATEMENT_MS),
        Figure(NAME, "a writer's revoke during cleanup, p99", percentile(during, 99) * 1000, "ms",
               note=f"{percentile(before, 99) * 1000:.1f} ms p99 before the cleanup; "
                    f"slowest during {max(during) * 1000:.1f} ms ({len(during)} writes)"),
    ]


if __name__ == "__main__":
    main(TITLE, run)
