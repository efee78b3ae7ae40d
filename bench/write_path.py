"""Revoke write path: durable ids/s per batch size, and broadcast-to-commit latency.

Throughput: one client calls :func:`revstore.revoke` (one durable commit,
then the broadcast) in batches of 1, 100 and 10,000 fresh ids; stock is the
same client's ``app.control.revoke`` (the broadcast alone, nothing stored).
Then one ``store.add`` of a million fresh ids, as ``revstore import-statedb``
writes an imported ``--statedb`` (one transaction, one clock version).

Latency: a stock broadcast ``revoke`` of one id reaches a revstore worker,
which writes it through; the client LISTENs on the store's channel, and
PostgreSQL delivers the notification only when the row commits, so
send-to-notification is send-to-commit.  Stock's nearest figure is the time
until a stock worker has the id in memory and its reply is back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from celery import Celery
from psycopg import sql

import revstore
from bench.common import BROKER, MILLION, Figure, Run, fresh_store, log, main, median, percentile
from revstore.store import RevocationStore

NAME = "write_path"
TITLE = "Revoke write path"
#: batch size -> batches to time
BATCHES = {1: 400, 100: 100, 10_000: 15}
QUICK_BATCHES = {1: 20, 100: 5, 10_000: 2}
SAMPLES, QUICK_SAMPLES = 200, 20
ROUNDS = 3
#: issue 26: faster than stock everywhere it counts
TARGET_IDS, TARGET_P50_MS, TARGET_P99_MS = 100_000, 10.0, 20.0
IMPORT_IDS, QUICK_IMPORT_IDS = MILLION, 20_000


def clients(store: RevocationStore) -> tuple[Any, Callable[..., Any]]:
    """A revstore client app on ``store``, and stock Celery's ``control.revoke`` (an app without revstore)."""
    app = Celery("bench-client", broker=BROKER)
    revstore.install(app)
    app.conf.revstore_url = store.url.render_as_string(hide_password=False)
    app.conf.revstore_schema = store.tables.schema
    return app, Celery("bench-stock-client", broker=BROKER).control.revoke


def ids_per_second(call: Callable[[list[str]], Any], size: int, batches: int) -> float:
    work = [[str(uuid.uuid4()) for _ in range(size)] for _ in range(batches)]
    started = time.perf_counter()
    for batch in work:
        call(batch)
    return size * batches / (time.perf_counter() - started)


def throughput(store: RevocationStore, batches: dict[int, int]) -> list[Figure]:
    app, stock_revoke = clients(store)
    figures = []
    for size, count in batches.items():
        # median of rounds taking turns: one round moved by a fifth between runs
        revs, stocks = [], []
        for _ in range(ROUNDS):
            revs.append(ids_per_second(lambda ids: revstore.revoke(app, ids), size, count))
            stocks.append(ids_per_second(lambda ids: stock_revoke(ids), size, count))
        rev, stock = median(revs), median(stocks)
        log(f"write path batch {size:,}: revstore {rev:,.0f} ids/s, stock broadcast {stock:,.0f} ids/s "
            f"(rounds: {', '.join(f'{r:,.0f}' for r in revs)})")
        big = size == max(batches)
        figures.append(Figure(NAME, f"durable revoke, batches of {size:,}", rev, "ids/s", stock,
                              target=f"≥ {TARGET_IDS:,} ids/s" if big else "",
                              met=rev >= TARGET_IDS if big else None))
    app.close()
    return figures


def imported(store: RevocationStore, count: int) -> Figure:
    """One ``store.add`` of ``count`` fresh ids (``revstore import-statedb``); stock has no durable import."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    started = time.perf_counter()
    store.add(ids, reason="bench import")
    rate = count / (time.perf_counter() - started)
    log(f"write path import of {count:,} ids in one call: {rate:,.0f} ids/s")
    return Figure(NAME, f"durable import of {count:,} ids in one call", rate, "ids/s",
                  target=f"≥ {TARGET_IDS:,} ids/s", met=rate >= TARGET_IDS)


def listen(store: RevocationStore) -> psycopg.Connection[Any]:
    url = store.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.channel)))
    return conn


def commit_latencies(store: RevocationStore, run: Run, samples: int) -> tuple[list[float], list[float]]:
    """Seconds from a stock broadcast to the worker's commit; and stock's revoke-and-reply."""
    app, stock_revoke = clients(store)
    rev_worker = run.worker("writer", store=store).start()
    stock_worker = run.worker("stock", concurrency=1).start()
    rev_worker.wait_ready()
    stock_worker.wait_ready()
    conn = listen(store)
    committed, replied = [], []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            stock_revoke(str(uuid.uuid4()), destination=[f"{rev_worker.name}@bench"])
            if next(conn.notifies(timeout=5.0), None) is None:
                raise TimeoutError("no commit notification within 5 s")
            committed.append(time.perf_counter() - started)
            started = time.perf_counter()
            reply = stock_revoke(str(uuid.uuid4()), destination=[f"{stock_worker.name}@bench"], reply=True,
                                 limit=1, timeout=5.0)
            if not reply:
                raise TimeoutError("no reply from the stock worker within 5 s")
            replied.append(time.perf_counter() - started)
            time.sleep(0.01)
    finally:
        conn.close()
        app.close()
    return committed, replied


def run(quick: bool = False) -> list[Figure]:
    with Run(NAME) as bench_run, fresh_store() as store:
        figures = throughput(store, QUICK_BATCHES if quick else BATCHES)
        committed, replied = commit_latencies(store, bench_run, QUICK_SAMPLES if quick else SAMPLES)
    with fresh_store() as store:  # its own table: the latency's worker must not load the million at start
        figures.append(imported(store, QUICK_IMPORT_IDS if quick else IMPORT_IDS))
    for pct, target in ((50, TARGET_P50_MS), (99, TARGET_P99_MS)):
        rev, stock = percentile(committed, pct) * 1000, percentile(replied, pct) * 1000
        figures.append(Figure(
            NAME, f"broadcast revoke to row committed by a worker, p{pct}", rev, "ms", stock,
            target=f"≤ {target:.0f} ms", met=rev <= target,
            note="stock: broadcast to the worker's reply (in memory only, nothing stored)",
        ))
    return figures


if __name__ == "__main__":
    main(TITLE, run)
