"""Propagation without broadcast, and the cost of an idle sync.

A revocation written only to the table (no broadcast, as an offline client
or the CLI would) reaches running workers by their sync: at once through
LISTEN/NOTIFY when listening, else at the next poll.  Four real workers
record (``bench.benchapp``) when each probe id lands in their revoked set;
the figure is commit-to-held, per worker and for all four.  Stock Celery has
no equivalent: a revocation that is not broadcast never reaches a worker.

The idle sync is the query every worker runs each poll when nothing
changed; it must cost the same with a million rows as with none.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

from bench.common import MILLION, Figure, Run, client_app, log, main, median, percentile, seed, fresh_store, wait_for
from revstore.config import DEFAULT_SYNC_INTERVAL
from revstore.store import RevocationStore

NAME = "propagation"
TITLE = "Propagation of a table-only revocation to 4 workers"
WORKERS = 4
#: mode -> (probes, seconds between probes)
PROBES = {"on": (150, 0.1), "off": (60, 0.25)}
QUICK_PROBES = {"on": (5, 0.1), "off": (3, 0.25)}
TARGET_P99_ON_MS = 100.0
IDLE_CALLS, STORED = 200, MILLION
QUICK_IDLE = (20, 5_000)


def probe_latencies(run: Run, store: RevocationStore, listen: bool, probes: int, gap: float) -> tuple[list[float], list[float]]:
    """Seconds from commit to held: per (probe, worker), and per probe for all workers."""
    mode = "on" if listen else "off"
    key = run.key(f"seen-{mode}")
    env = {"BENCH_PROBE_KEY": key, "BENCH_LISTEN": str(listen).lower()}
    workers = [run.worker(f"{mode}{i}", store=store, concurrency=1, env=env).start() for i in range(WORKERS)]
    for w in workers:
        w.wait_ready()
    if listen:
        wait_for(lambda: len(store.stats().get("listeners", [])) >= WORKERS, 30, "4 live listeners", *workers, interval=0.1)
    written: dict[str, float] = {}
    for i in range(probes):
        value = f"probe-{mode}-{i}"
        store.add([value])
        written[value] = time.time()
        time.sleep(gap * random.uniform(0.5, 1.5))
    results = client_app().results()
    expected = probes * WORKERS
    wait_for(lambda: results.llen(key) >= expected, DEFAULT_SYNC_INTERVAL * 3 + 10, "every worker to hold every probe",
             *workers, interval=0.1)
    for w in workers:
        w.stop()
    held: dict[str, list[float]] = defaultdict(list)
    for entry in results.lrange(key, 0, -1):
        _host, value, when = entry.decode().split()
        held[value].append(float(when) - written[value])
    per_worker = [t for times in held.values() for t in times]
    all_workers = [max(times) for times in held.values()]
    return per_worker, all_workers


def idle_sync_ms(stores: list[RevocationStore], calls: int) -> list[float]:
    """Median ms of one ``changes_since`` that finds nothing (what every poll runs), per store.

    The stores take turns, call by call, so a drift in the machine's load
    (or a checkpoint after seeding) weighs on each the same.
    """
    markers = [store.current_version() for store in stores]
    timings: list[list[float]] = [[] for _ in stores]
    for _ in range(calls):
        for store, marker, out in zip(stores, markers, timings):
            started = time.perf_counter()
            changes = store.changes_since(marker)
            out.append(time.perf_counter() - started)
            assert not changes.rows
    return [median(t) * 1000 for t in timings]


def run(quick: bool = False, keep: dict[str, list[float]] | None = None) -> list[Figure]:
    """``keep`` receives each mode's per-worker latencies (seconds), for the plots."""
    figures = []
    with Run(NAME) as bench_run, fresh_store() as store:
        for mode, (probes, gap) in (QUICK_PROBES if quick else PROBES).items():
            per_worker, all_workers = probe_latencies(bench_run, store, mode == "on", probes, gap)
            if keep is not None:
                keep[mode] = per_worker
            log(f"propagation listening {mode}: all-4 p50 {percentile(all_workers, 50) * 1000:.0f} ms, "
                f"p99 {percentile(all_workers, 99) * 1000:.0f} ms")
            for pct in (50, 99):
                on99 = mode == "on" and pct == 99
                figures.append(Figure(NAME, f"listening {mode}: commit to held by each worker, p{pct}",
                                      percentile(per_worker, pct) * 1000, "ms"))
                figures.append(Figure(NAME, f"listening {mode}: commit to held by all {WORKERS} workers, p{pct}",
                                      percentile(all_workers, pct) * 1000, "ms",
                                      target=f"≤ {TARGET_P99_ON_MS:.0f} ms" if on99 else "",
                                      met=percentile(all_workers, 99) * 1000 <= TARGET_P99_ON_MS if on99 else None,
                                      note="" if mode == "on" else f"poll every {DEFAULT_SYNC_INTERVAL:.0f} s (default)"))
        calls, stored = QUICK_IDLE if quick else (IDLE_CALLS, STORED)
        with fresh_store() as full_store:
            seed(full_store, stored)
            empty, full = idle_sync_ms([store, full_store], calls)
    figures.append(Figure(NAME, "one idle sync, nearly empty table", empty, "ms"))
    figures.append(Figure(NAME, f"one idle sync, {stored:,} rows", full, "ms", target="≤ 1.5 × nearly empty",
                          met=full <= 1.5 * empty, note=f"{full / empty:.2f} × the nearly empty table"))
    return figures


if __name__ == "__main__":
    main(TITLE, run)
