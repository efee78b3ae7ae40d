"""Start-up: worker start to the first task it runs, stock ``--statedb`` vs revstore.

A probe task waits in the worker's queue before the worker starts; the
figure is the time from spawning ``celery worker`` to the probe running, so
it covers imports, the pool, loading revocations and consuming.  Stock loads
the same ids from a real ``--statedb`` shelve (uncapped); revstore loads them
from PostgreSQL.  "Added" is the difference to a plain stock worker with
nothing to load, measured in the same run.

Stock runs with Celery's revoked-set cap lifted, so it holds every id it
loads, as revstore does; at the sizes past Celery's default cap (50,000) a
third kind, ``stock-capped``, starts stock as it ships: it reads the same
file and keeps the newest 50,000, for what lifting the cap costs.  In each
repeat the kinds take turns in a changing order (``common.turns``); a ratio
is the median of the repeats' ratios, with their min and max.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (MILLION, STOCK_REVOKES_MAX, Figure, Run, client_app, fresh_store, log, main, median, seed,
                          turns, wait_for, write_statedb)
from revstore.store import RevocationStore

NAME = "startup"
TITLE = "Start-up: spawn to first task"
SIZES = (0, 50_000, 250_000, 500_000, MILLION)
#: 60,000 is past Celery's default cap, so a quick run starts stock at the cap too
QUICK_SIZES = (0, 500, 5_000, 60_000)
REPEATS = 3
TARGET_ADDED = 1.5
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


#: stock as it ships: Celery's default cap on the revoked set
CAPPED = "stock-capped"


def kinds_at(size: int) -> tuple[str, ...]:
    """What starts at ``size``: stock at the default cap too once the cap would drop ids."""
    return ("stock", "revstore", CAPPED) if size > STOCK_REVOKES_MAX else ("stock", "revstore")


def measure(run: Run, store: RevocationStore, sizes: tuple[int, ...], repeats: int) -> dict[tuple[str, int], list[Sample]]:
    """Samples for (kind, size), sizes ascending, the table grown in place; kind is one of ``kinds_at(size)``."""
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
        for order in turns(repeats, kinds_at(size)):  # take turns, so all see the same machine load
            for kind in order:
                if kind == "revstore":
                    sample = start_once(run, f"rev{size}", store=store, env=FROM_TABLE)
                else:
                    sample = start_once(run, f"{kind}{size}", statedb=statedb,
                                        revokes_max=STOCK_REVOKES_MAX if kind == CAPPED else 0)
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
    return figures_from(samples, sizes)


def paired(values: list[float], stock: list[float]) -> list[float] | None:
    """Each repeat's value ÷ stock's in the same repeat; None when a stock figure is within the noise of 0."""
    return [v / s for v, s in zip(values, stock)] if all(s > 0 for s in stock) else None


def figures_from(samples: dict[tuple[str, int], list[Sample]], sizes: tuple[int, ...]) -> list[Figure]:
    """Spawn to first task and the start-up a load adds (over stock with nothing), per size and kind."""
    secs = {k: [s.seconds for s in v] for k, v in samples.items()}
    empty = secs[("stock", 0)]
    base = median(empty)
    figures = [Figure(NAME, "plain stock worker, nothing to load", base, "s", note="the baseline for 'added'")]
    for size in sizes:
        rev, stock = secs[("revstore", size)], secs[("stock", size)]
        figures.append(Figure(NAME, f"{size:,} stored: spawn to first task", median(rev), "s", median(stock),
                              rounds=paired(rev, stock)))
        if not size:
            continue
        big = size == max(sizes)
        added = lambda kind: [s - e for s, e in zip(secs[(kind, size)], empty)]  # noqa: E731
        figures.append(Figure(
            NAME, f"{size:,} stored: added start-up", median(rev) - base, "s", median(stock) - base,
            target=f"≤ {TARGET_ADDED} s" if big else "", met=(median(rev) - base <= TARGET_ADDED) if big else None,
            rounds=paired(added("revstore"), added("stock")),
        ))
        if (CAPPED, size) in secs:
            capped = secs[(CAPPED, size)]
            figures.append(Figure(
                NAME, f"{size:,} stored: added start-up, stock at the default cap", median(rev) - base, "s",
                median(capped) - base, rounds=paired(added("revstore"), added(CAPPED)),
                baseline=f"holds {STOCK_REVOKES_MAX:,}",
                note=f"stock as it ships (CELERY_WORKER_REVOKES_MAX at its default) reads the same file and keeps "
                     f"the newest {STOCK_REVOKES_MAX:,}; revstore holds all {size:,}"))
    return figures


if __name__ == "__main__":
    main(TITLE, run)
