"""Hot path: tasks/s through a real worker, revstore on (a million stored) vs off, and with name rules.

Three configurations of the same worker (prefork, Redis broker) take turns
in every round, each on its own freshly filled queue, one after the other:

- ``stock``: revstore off (stock Celery, revoked-set cap lifted);
- ``revstore``: a million revocations stored;
- ``names``: the same million plus 1,000 name rules (issue 24), none naming
  the benchmark's task, and one that names it with a ``where`` on its first
  argument that never holds: every task received pays the name lookup and
  that rule's argument check, and none is discarded (the run fails if one is).

One table serves both revstore kinds: the rules are revoked just before each
``names`` run and restored after it (a worker loads the table once, at
start-up, and restored rules are not loaded), which spares seeding a second
million rows (over a minute of make bench's 20).

Each worker has a control exchange of its run's own: a stock worker on the
default one hears every broadcast revoke of whatever else shares the broker
(another benchmark, a test suite), and one stalled this benchmark for a
minute.  Each worker starts on an empty queue and settles first: a revstore worker
loads the million rows and, some 5 s later, writes its local snapshot on the
sync thread (start-up work, measured by ``bench.startup`` and
``bench.snapshot_start``); the bench waits for that file.  Then the run's
tasks, queued beforehand under another key, appear in the worker's queue at
once (a Redis ``RENAME``), so queueing them costs the window nothing.  The
rate is read between 5% and 95% of the tasks done (warm-up and the drain's
tail outside it); the worker's CPU time (main process and pool, from ``/proc``) over the same window
gives CPU per task, which a busy neighbour disturbs far less than wall-clock
rate.  A ratio is the median of the rounds' ratios (revstore ÷ stock, names ÷
revstore), with their min and max; the order of the three changes from round
to round (``common.turns``) so none always runs first.  On a machine with
CPUs to spare each worker is pinned to the same cores (``taskset``).

Beside the runs, the two pieces of revstore's main-process work that name
rules make longer are timed in process on memory loaded from each store,
which no neighbour can blur: the receipt check (revstore's handler of
Celery's ``task_received``, the only code revstore runs per task) and the
drain tick's expiry pass (every 0.1 s; it walks every rule).  What the rules
add to both, per second at stock's rate, is the share of the main process
(which bounds throughput) they can take at most.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from celery.utils.collections import LimitedSet

from bench.common import (MILLION, Figure, Run, Worker, bench_cpus, client_app, fresh_store, log, main, median,
                          seed, turns, wait_for)
from revstore.bootstep import DRAIN_INTERVAL, Revstore
from revstore.memory import FALLBACK_SET_EXPIRES, WorkerMemory
from revstore.store import RevocationStore, Target

NAME = "hotpath"
TITLE = "Hot path: tasks/s through a worker"
#: 8,000 tasks a run: 15 runs (5 rounds of 3) take some 6-7 minutes on a quiet 2-core machine (10.5 with
#: 10,000 on a busy one), which with the rest keeps make bench under its 20 minutes
TASKS, STORED, ROUNDS = 8_000, MILLION, 5
QUICK = (600, 2_000, 2)
TARGET = 0.99
NAME_RULES = 1_000
KINDS = ("stock", "revstore", "names")
#: the share of a run's tasks done before the window opens, and after it closes
EDGE = 0.05
#: seconds every worker idles once settled, so each kind starts its tasks from a quiet worker
IDLE = 1.0
#: pool processes of each worker; the worker is pinned to this many + 1 CPUs when there are enough
CONCURRENCY = 2
#: the id docs/index.md quotes the throughput figure by (its wording changed when rounds began to take turns)
KEY = "hotpath-20-000-trivial-tasks-each-revstore-with-1-000-000-stored-vs-off-side-by-side"


@dataclass
class Sample:
    """One worker's run: tasks/s and CPU µs per task over the window."""

    rate: float
    cpu_us: float


def enqueue(queue: str, key: str, total: int) -> None:
    """Fill ``queue`` with ``total`` trivial tasks over one producer connection."""
    tasks = client_app()
    with tasks.app.producer_or_acquire() as producer:
        for _ in range(total):
            tasks.count.apply_async((key, total), queue=queue, producer=producer)


def measure_one(worker: Worker, key: str, total: int, staged: str, settled: Callable[[], bool]) -> Sample:
    """Start ``worker``, let it settle, hand it the ``staged`` tasks; its rate and CPU per task in the window."""
    results = client_app().results()

    def done() -> int:
        return int(results.get(key) or 0)

    worker.start(wait=True)
    try:
        wait_for(settled, 120, f"{worker.name} to settle", worker, interval=0.1)
        time.sleep(IDLE)
        results.rename(staged, worker.queue)  # kombu's Redis list for a queue is keyed by the queue's name
        low, high = int(total * EDGE), int(total * (1 - EDGE))
        wait_for(lambda: done() >= low, 180, f"{worker.name} past {low} tasks", worker, interval=0.02)
        opened, first, cpu_first = time.monotonic(), done(), worker.cpu_seconds()
        wait_for(lambda: done() >= high, 600, f"{worker.name} past {high} tasks", worker, interval=0.02)
        closed, last, cpu_last = time.monotonic(), done(), worker.cpu_seconds()
        # every task runs: a name rule that discarded one would make the figure a lie
        wait_for(lambda: done() >= total, 60, f"{worker.name} to run all {total} tasks", worker)
    finally:
        worker.kill()
    ran = last - first
    return Sample(ran / (closed - opened), (cpu_last - cpu_first) / ran * 1e6)


def snapshot_written(state: Path) -> bool:
    """The worker wrote its local snapshot (its last start-up work, some 5 s after the load)."""
    return any(state.rglob("*.snapshot"))


def name_rules() -> list[Target]:
    """1,000 rules on other task names, and one on the benchmark's task that its arguments never match.

    ``count(key, total)``: the rule wants ``args[0] == "no-such-key"``, which
    no run's key is, so the worker evaluates it for every task and runs them all.
    """
    others = [Target.name(f"bench.other_{i}", {"customer_id": i}) for i in range(NAME_RULES)]
    return [*others, Target.name(client_app().count.name, {0: "no-such-key"})]


@dataclass
class Check:
    """revstore's own main-process work, timed in process: µs per task received and per drain tick."""

    task_us: float
    tick_us: float


def check_us(store: RevocationStore) -> Check:
    """Time revstore's receipt check and expiry pass on memory loaded from ``store`` as a starting worker loads it.

    Calls the worker step's own handler (``Revstore._on_task_received``) on
    a request for the benchmark's task, as Celery's ``task_received`` signal
    would, and ``WorkerMemory.purge`` as each drain tick does; the fastest of
    5 repeats (the least disturbed).
    """
    memory = WorkerMemory(LimitedSet(maxlen=0, expires=FALLBACK_SET_EXPIRES), {})
    memory.prepare()
    snapshot, _ = store.load_active()
    memory.load(snapshot)
    step = SimpleNamespace(sync=SimpleNamespace(memory=memory))
    request = SimpleNamespace(name=client_app().count.name, id="hotpath-check", root_id="hotpath-check",
                              args=["bench-key", TASKS], kwargs={})
    handler = Revstore._on_task_received
    calls, ticks = 20_000, 200
    task = min(timeit.repeat(lambda: handler(step, request=request), number=calls, repeat=5))  # type: ignore[arg-type]
    if request.id in memory.revoked:
        raise RuntimeError("hotpath: a name rule matched the benchmark's task; the figure would time a discard")
    tick = min(timeit.repeat(memory.purge, number=ticks, repeat=5))
    return Check(task / calls * 1e6, tick / ticks * 1e6)


@contextmanager
def rules_stored(store: RevocationStore, on: bool) -> Iterator[None]:
    """The name rules revoked in ``store`` while the block runs (if ``on``), restored after it."""
    if not on:
        yield
        return
    rules = name_rules()
    store.add(rules, expires=24 * 3600)
    try:
        yield
    finally:
        store.remove(rules)


def rounds(run: Run, store: RevocationStore, total: int, count: int) -> dict[str, list[Sample]]:
    """``count`` rounds in which every kind runs once, in the order ``turns`` gives."""
    samples: dict[str, list[Sample]] = {kind: [] for kind in KINDS}
    cpus = bench_cpus(CONCURRENCY + 1)
    log(f"hotpath: workers pinned to CPUs {cpus}" if cpus else "hotpath: too few CPUs to pin workers; they float")
    for i, order in enumerate(turns(count, KINDS)):
        for kind in order:
            state = run.logdir / f"state-{kind}{i}"
            worker = run.worker(f"{kind}{i}", store=None if kind == "stock" else store, cpus=cpus,
                                concurrency=CONCURRENCY, env={"REVSTORE_STATE_DIR": str(state),
                                                              "BENCH_CONTROL_EXCHANGE": run.queue("control")})
            key, staged = run.key(worker.name), run.queue(f"staged-{kind}{i}")
            # queued under the worker's own queue name (a message the worker gives back on a lost
            # connection returns there), then held under another key until the worker has settled
            enqueue(worker.queue, key, total)
            client_app().results().rename(worker.queue, staged)
            settled = (lambda: True) if kind == "stock" else (lambda state=state: snapshot_written(state))
            with rules_stored(store, kind == "names"):
                samples[kind].append(measure_one(worker, key, total, staged, settled))
        log(f"hotpath round {i} ({', '.join(order)}): " + ", ".join(
            f"{kind} {samples[kind][-1].rate:,.0f}/s {samples[kind][-1].cpu_us:,.0f} µs" for kind in KINDS))
    return samples


def ratios(samples: dict[str, list[Sample]], kind: str, base: str, attr: str) -> list[float]:
    """Each round's ``kind`` ÷ ``base`` of ``attr``."""
    return [getattr(a, attr) / getattr(b, attr) for a, b in zip(samples[kind], samples[base])]


def figures(samples: dict[str, list[Sample]], total: int, stored: int, checks: dict[str, Check]) -> list[Figure]:
    """Throughput (the targets) and CPU per task, for revstore vs off and name rules vs none."""
    count = len(samples["stock"])
    rate = {kind: median([s.rate for s in v]) for kind, v in samples.items()}
    cpu = {kind: median([s.cpu_us for s in v]) for kind, v in samples.items()}
    plain = ratios(samples, "revstore", "stock", "rate")
    named = ratios(samples, "names", "revstore", "rate")
    window = (f"{count} rounds taking turns, each run's rate over its {EDGE:.0%}–{1 - EDGE:.0%} of {total:,} tasks; "
              "the ratio is the median of the rounds' ratios (min–max beside it)")
    return [
        Figure(NAME, f"{total:,} trivial tasks per run, revstore with {stored:,} stored vs off", rate["revstore"],
               "tasks/s", rate["stock"], target=f"ratio ≥ {TARGET}", met=median(plain) >= TARGET, rounds=plain,
               baseline="revstore off", key=KEY, note=window),
        Figure(NAME, "worker CPU per task (main process and pool), revstore vs off", cpu["revstore"], "µs",
               cpu["stock"], rounds=ratios(samples, "revstore", "stock", "cpu_us"), baseline="revstore off",
               note="the same runs' CPU time over the same window: lower is better, and a busy machine "
                    "moves it far less than the rate"),
        Figure(NAME, f"{NAME_RULES:,} name rules stored (one names the task, with a where it fails) vs none",
               rate["names"], "tasks/s", rate["revstore"], target=f"ratio ≥ {TARGET}", met=median(named) >= TARGET,
               rounds=named, baseline="revstore, no name rules",
               note=f"both with {stored:,} stored; every task pays the name lookup and the one rule's argument "
                    f"check, and all run (none discarded); {window}"),
        Figure(NAME, f"worker CPU per task, {NAME_RULES:,} name rules vs none", cpu["names"], "µs", cpu["revstore"],
               rounds=ratios(samples, "names", "revstore", "cpu_us"), baseline="revstore, no name rules"),
        # no stock column: a ratio to a sub-microsecond baseline says nothing about throughput; the share does
        Figure(NAME, f"receipt check per task, in process, with {NAME_RULES:,} name rules",
               checks["names"].task_us, "µs",
               note=f"revstore's whole per-task code, timed on memory loaded from each store; "
                    f"{checks['revstore'].task_us:.2f} µs with no name rules"),
        Figure(NAME, f"drain tick's expiry pass, in process, with {NAME_RULES:,} name rules",
               checks["names"].tick_us, "µs",
               note=f"{checks['revstore'].tick_us:.2f} µs with no name rules; "
                    f"every {DRAIN_INTERVAL} s on the main process; with the receipt check's, the rules add "
                    f"{added_share(checks, rate['stock']):.2%} of the main process's time at stock's rate: the "
                    "most they can take from throughput, which the main process bounds"),
    ]


def added_share(checks: dict[str, Check], rate: float) -> float:
    """The share of one second of the main process that the name rules' extra checks take at ``rate`` tasks/s."""
    per_task = checks["names"].task_us - checks["revstore"].task_us
    per_tick = checks["names"].tick_us - checks["revstore"].tick_us
    return (per_task * rate + per_tick / DRAIN_INTERVAL) / 1e6


def run(quick: bool = False) -> list[Figure]:
    total, stored, count = QUICK if quick else (TASKS, STORED, ROUNDS)
    with Run(NAME) as bench_run, fresh_store() as store:
        seed(store, stored)
        samples = rounds(bench_run, store, total, count)
        checks = {"revstore": check_us(store)}
        with rules_stored(store, True):
            checks["names"] = check_us(store)
    return figures(samples, total, stored, checks)


if __name__ == "__main__":
    main(TITLE, run)
