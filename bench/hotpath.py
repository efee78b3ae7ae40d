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

A second series adds 1,000 name rules (issue 24), none naming the
benchmark's task, plus one that names it with a ``where`` its arguments do
not match: every task received then pays the name lookup and that one
rule's argument check, and none is discarded.
"""

from __future__ import annotations

import time

from bench.common import MILLION, Figure, Run, client_app, fresh_store, log, main, median, seed, wait_for
from revstore.store import RevocationStore, Target

NAME = "hotpath"
TITLE = "Hot path: tasks/s through a worker"
TASKS, STORED, ROUNDS = 20_000, MILLION, 3
QUICK = (400, 2_000, 1)
TARGET = 0.98
NAME_RULES = 1_000
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


def name_rules() -> list[Target]:
    """1,000 rules on other task names, and one on the benchmark's task that its arguments never match."""
    others = [Target.name(f"bench.other_{i}", {"customer_id": i}) for i in range(NAME_RULES)]
    return [*others, Target.name(client_app().count.name, {0: "no-such-key"})]


def series(run_: Run, store: RevocationStore, total: int, rounds: int, first: int,
           label: str) -> tuple[dict[str, float], str]:
    """Median tasks/s of each kind over ``rounds`` paired rounds (workers numbered from ``first``), and their ratios."""
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in range(rounds):
        for kind, rate in paired_round(run_, first + i, total, store).items():
            rates[kind].append(rate)
        log(f"hotpath{label} round {i}: stock {rates['stock'][-1]:,.0f}, revstore {rates['revstore'][-1]:,.0f} tasks/s")
    ratios = ", ".join(f"{r / s:.2f}" for r, s in zip(rates["revstore"], rates["stock"]))
    return {kind: median(values) for kind, values in rates.items()}, ratios


def run(quick: bool = False) -> list[Figure]:
    total, stored, rounds = QUICK if quick else (TASKS, STORED, ROUNDS)
    with Run(NAME) as bench_run, fresh_store() as store:
        seed(store, stored)
        plain, plain_ratios = series(bench_run, store, total, rounds, 0, "")
        store.add(name_rules(), expires=24 * 3600)
        named, named_ratios = series(bench_run, store, total, rounds, rounds, " +names")
    note = "each worker's rate while both share the machine; median of {} rounds, whose ratios were {}"
    return [Figure(NAME, f"{total:,} trivial tasks each, revstore with {stored:,} stored vs off, side by side",
                   plain["revstore"], "tasks/s", plain["stock"], target=f"ratio ≥ {TARGET}",
                   met=plain["revstore"] / plain["stock"] >= TARGET, note=note.format(rounds, plain_ratios)),
            Figure(NAME, f"the same with {NAME_RULES:,} name rules stored, one naming the task "
                   "with a where it does not match", named["revstore"], "tasks/s", named["stock"],
                   target=f"ratio ≥ {TARGET}", met=named["revstore"] / named["stock"] >= TARGET,
                   note=note.format(rounds, named_ratios))]


if __name__ == "__main__":
    main(TITLE, run)
