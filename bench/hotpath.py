"""Hot path: tasks/s through one real worker, revstore on (a million stored) vs off.

Each round fills a fresh queue with trivial tasks, then starts one prefork
worker on it; the tasks themselves record when the first and the last ran,
so neither the enqueueing nor the start-up (nor the million-row load) is in
the figure.  Rounds alternate stock and revstore so both see the same
machine; the median of each counts (rounds of one configuration differ by
10-20% on a shared 2-core machine, so one lucky round must not decide).
"""

from __future__ import annotations

from bench.common import MILLION, Figure, Run, client_app, fresh_store, log, main, median, seed, wait_for
from revstore.store import RevocationStore

NAME = "hotpath"
TITLE = "Hot path: tasks/s through one worker"
TASKS, STORED, ROUNDS = 20_000, MILLION, 4
QUICK = (300, 2_000, 1)
TARGET = 0.98


def enqueue(queue: str, key: str, total: int) -> None:
    """Fill ``queue`` with ``total`` trivial tasks over one producer connection."""
    tasks = client_app()
    with tasks.app.producer_or_acquire() as producer:
        for _ in range(total):
            tasks.count.apply_async((key, total), queue=queue, producer=producer)


def one_round(run: Run, label: str, total: int, store: RevocationStore | None) -> float:
    """Tasks per second from the first task run to the last, on a pre-filled queue."""
    results = client_app().results()
    worker = run.worker(label, store=store)
    key = run.key(worker.name)
    enqueue(worker.queue, key, total)
    worker.start()
    try:
        wait_for(lambda: results.get(f"{key}:last"), 600, f"{total} tasks on {worker.name}", worker, interval=0.1)
    finally:
        worker.kill()
    first, last = float(results.get(f"{key}:first")), float(results.get(f"{key}:last"))  # type: ignore[arg-type]
    return (total - 1) / (last - first)


def run(quick: bool = False) -> list[Figure]:
    total, stored, rounds = QUICK if quick else (TASKS, STORED, ROUNDS)
    rates: dict[str, list[float]] = {"stock": [], "revstore": []}
    with Run(NAME) as bench_run, fresh_store() as store:
        seed(store, stored)
        for i in range(rounds):
            for kind in ("stock", "revstore"):
                rate = one_round(bench_run, f"{kind}{i}", total, store if kind == "revstore" else None)
                rates[kind].append(rate)
                log(f"hotpath {kind} round {i}: {rate:,.0f} tasks/s")
    rev, stock = median(rates["revstore"]), median(rates["stock"])
    rounds_text = "; ".join(f"{k}: " + ", ".join(f"{r:,.0f}" for r in v) for k, v in rates.items())
    return [Figure(NAME, f"{total:,} trivial tasks, revstore with {stored:,} stored vs off", rev, "tasks/s", stock,
                   target=f"ratio ≥ {TARGET}", met=rev / stock >= TARGET,
                   note=f"median of {rounds} alternating rounds ({rounds_text})")]


if __name__ == "__main__":
    main(TITLE, run)
