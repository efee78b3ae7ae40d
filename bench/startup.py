"""Start-up: worker start to the first task it runs, stock ``--statedb`` vs revstore.

A probe task waits in the worker's queue before the worker starts; the
figure is the time from spawning ``celery worker`` to the probe running, so
it covers imports, the pool, loading revocations and consuming.  Stock loads
the same ids from a real ``--statedb`` shelve (uncapped); revstore loads them
from PostgreSQL.  "Added" is the difference to a plain stock worker with
nothing to load, measured in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import MILLION, Figure, Run, client_app, fresh_store, log, main, median, seed, wait_for, write_statedb
from revstore.store import RevocationStore

NAME = "startup"
TITLE = "Start-up: spawn to first task"
SIZES = (0, 50_000, 250_000, 500_000, MILLION)
QUICK_SIZES = (0, 500, 5_000)
REPEATS = 3
#: issue 26: a million stored add at most a second to a worker's start
TARGET_ADDED = 1.0
#: Load from the table every time (no local snapshot): bench.snapshot_start compares the two
FROM_TABLE = {"REVSTORE_STATE_DIR": "none"}


@dataclass
class Sample:
    """One worker start: seconds to the first task, main-process memory then."""

    seconds: float
    rss_mib: float
    peak_mib: float


def start_once(run: Run, label: str, store: RevocationStore | None = None, statedb: Path | None = None,
               **options: Any) -> Sample:
    """Start one worker with a probe already queued; time it; stop it (``options``: more Worker fields)."""
    tasks = client_app()
    worker = run.worker(label, store=store, statedb=statedb, **options)
    key = run.key(f"{label}-{len(run.workers)}")
    tasks.mark.apply_async((key,), queue=worker.queue)
    results = tasks.results()
    worker.start()
    try:
        ran_at = float(wait_for(lambda: results.get(key), 180, f"probe on {worker.name}", worker))
        rss, peak = worker.rss()
    finally:
        worker.kill()  # a stock worker would spend seconds re-saving its state db
    return Sample(ran_at - worker.started_at, rss, peak)


def measure(run: Run, store: RevocationStore, sizes: tuple[int, ...], repeats: int) -> dict[tuple[str, int], list[Sample]]:
    """Samples for ("stock"|"revstore", size), sizes ascending, the table grown in place."""
    samples: dict[tuple[str, int], list[Sample]] = {}
    start_once(run, "warmup", store=store)  # the first start pays for a cold page cache
    seeded = 0
    for size in sizes:
        seed(store, size - seeded, start=seeded)
        seeded = size
        statedb = None
        if size:
            statedb = run.logdir / f"stock-{size}.state"
            write_statedb(statedb, size)
        for i in range(repeats):  # alternate, so both see the same machine load
            for kind in ("stock", "revstore"):
                sample = (start_once(run, f"stock{size}", statedb=statedb) if kind == "stock"
                          else start_once(run, f"rev{size}", store=store, env=FROM_TABLE))
                samples.setdefault((kind, size), []).append(sample)
                log(f"startup {kind} {size:,}: {sample.seconds:.2f}s rss {sample.rss_mib:.0f} MiB")
    return samples


def run(quick: bool = False, keep: dict[tuple[str, int], list[Sample]] | None = None) -> list[Figure]:
    """``keep`` receives the samples, for the memory benchmark to reuse."""
    sizes = QUICK_SIZES if quick else SIZES
    with Run(NAME) as bench_run, fresh_store() as store:
        samples = measure(bench_run, store, sizes, 1 if quick else REPEATS)
    if keep is not None:
        keep.update(samples)
    secs = {k: median([s.seconds for s in v]) for k, v in samples.items()}
    base = secs[("stock", 0)]
    figures = [Figure(NAME, "plain stock worker, nothing to load", base, "s", note="the baseline for 'added'")]
    for size in sizes:
        rev, stock = secs[("revstore", size)], secs[("stock", size)]
        figures.append(Figure(NAME, f"{size:,} stored: spawn to first task", rev, "s", stock))
        if size:
            big = size == max(sizes)
            figures.append(Figure(
                NAME, f"{size:,} stored: added start-up", rev - base, "s", stock - base,
                target=f"≤ {TARGET_ADDED} s" if big else "", met=(rev - base <= TARGET_ADDED) if big else None,
            ))
    return figures


if __name__ == "__main__":
    main(TITLE, run)
