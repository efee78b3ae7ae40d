"""Hot path: tasks/s through a real worker, revstore on (a million stored) vs off.

Each round fills two fresh queues with the same number of trivial tasks and
starts a stock worker and a revstore worker (prefork, Redis broker) on them
side by side.  Over the window in which both are consuming (from the moment
both ran a task until the first one drains its queue) the bench reads both
task counters in one Redis call every 0.1 s: the two rates are taken at the
same moments on the same machine, so whatever else the machine runs weighs
on both alike.  Run one after the other, rounds of one configuration
differed by 10-20% on a shared 2-core machine, more than the effect
measured.  Start-up (and the million-row load) is outside the window.
"""

from __future__ import annotations

import time

from bench.common import MILLION, Figure, Run, client_app, fresh_store, log, main, median, seed, wait_for
from revstore.store import RevocationStore

NAME = "hotpath"
TITLE = "Hot path: tasks/s through a worker"
TASKS, STORED, ROUNDS = 20_000, MILLION, 3
QUICK = (400, 2_000, 1)
TARGET = 0.98
KINDS = ("stock", "revstore")


def enqueue(queue: str, key: str, total: int) -> None:
    """Fill ``queue`` with ``total`` trivial tasks over one producer connection."""
    tasks = client_app()
    with tasks.app.producer_or_acquire() as producer:
        for _ in range(total):
            tasks.count.apply_async((key, total), queue=queue, producer=producer)


def paired_round(run: Run, index: int, total: int, store: RevocationStore) -> dict[str, float]:
    """Tasks/s of a stock and a revstore worker over the window both were consuming."""
    results = client_app().results()
    workers = {kind: run.worker(f"{kind}{index}", store=store if kind == "revstore" else None) for kind in KINDS}
    keys = {kind: run.key(w.name) for kind, w in workers.items()}
    for kind, worker in workers.items():
        enqueue(worker.queue, keys[kind], total)
    for worker in workers.values():
        worker.start()
    try:
        def counts() -> tuple[float, list[int]]:
            values = results.mget([keys[kind] for kind in KINDS])
            return time.monotonic(), [int(v or 0) for v in values]

        wait_for(lambda: all(counts()[1]), 120, "both workers consuming", *workers.values())
        opened, before = counts()
        wait_for(lambda: max(counts()[1]) >= total, 600, "a worker to drain its queue", *workers.values(),
                 interval=0.1)
        closed, after = counts()
    finally:
        for worker in workers.values():
            worker.kill()
    return {kind: (after[i] - before[i]) / (closed - opened) for i, kind in enumerate(KINDS)}


def run(quick: bool = False) -> list[Figure]:
    total, stored, rounds = QUICK if quick else (TASKS, STORED, ROUNDS)
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with Run(NAME) as bench_run, fresh_store() as store:
        seed(store, stored)
        for i in range(rounds):
            for kind, rate in paired_round(bench_run, i, total, store).items():
                rates[kind].append(rate)
            log(f"hotpath round {i}: stock {rates['stock'][-1]:,.0f}, revstore {rates['revstore'][-1]:,.0f} tasks/s")
    ratios = [r / s for r, s in zip(rates["revstore"], rates["stock"])]
    rev, stock = median(rates["revstore"]), median(rates["stock"])
    rounds_text = ", ".join(f"{r:.2f}" for r in ratios)
    return [Figure(NAME, f"{total:,} trivial tasks each, revstore with {stored:,} stored vs off, side by side", rev,
                   "tasks/s", stock, target=f"ratio ≥ {TARGET}", met=rev / stock >= TARGET,
                   note=f"each worker's rate while both share the machine; median of {rounds} rounds, "
                        f"whose ratios were {rounds_text}")]


if __name__ == "__main__":
    main(TITLE, run)
