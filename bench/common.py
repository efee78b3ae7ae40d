"""What every benchmark shares: services, seeding, real workers, figures.

The benchmarks measure real ``celery worker`` processes (prefork, Redis
broker) on the local PostgreSQL, stock and revstore in the same run, so a
ratio compares like with like on whatever else the machine is doing.  Each
run works in its own PostgreSQL schema and its own queue names on Redis
databases 9 and 8 (the tests use 5, 6 and 10-15), so it can run beside the test suite;
``REVSTORE_BENCH_BROKER`` / ``REVSTORE_BENCH_BACKEND`` (whole URLs) move it to other
databases, for engineers sharing one Redis.

Stock workers run with Celery's cap on the revoked set lifted
(``CELERY_WORKER_REVOKES_MAX=0``): at the default cap (50,000) a stock worker
forgets all but the newest 50,000 revocations, so it would be doing less
than revstore, which holds every one.  Where the cap changes the figure
(start-up, memory) stock at the default cap is measured too.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import pickle
import shelve
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from revstore import migrate, processes
from revstore.config import ENV
from revstore.processes import WorkerProcess
from revstore.store import RevocationStore

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("REVSTORE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("REVSTORE_BENCH_REDIS", "redis://127.0.0.1:6379")
BROKER = os.environ.get("REVSTORE_BENCH_BROKER", f"{REDIS_BASE}/9")
BACKEND = os.environ.get("REVSTORE_BENCH_BACKEND", f"{REDIS_BASE}/8")
MILLION = 1_000_000
#: Celery's default cap on a worker's revoked set (``CELERY_WORKER_REVOKES_MAX`` unset)
STOCK_REVOKES_MAX = 50_000
#: rows per transaction when seeding (setup, not measured)
SEED_BATCH = 50_000


# --------------------------------------------------------------- figures


@dataclass
class Figure:
    """One measured figure, its stock baseline and its target."""

    bench: str
    name: str
    value: float
    unit: str
    #: stock Celery's figure for the same thing in the same run (None: stock has none)
    stock: float | None = None
    #: how the target reads in the table, e.g. "≤ 1.5 s"
    target: str = ""
    #: the target was met (None: no target)
    met: bool | None = None
    note: str = ""
    #: each round's revstore / stock, when the figure is rounds that took turns: the ratio is
    #: their median (a ratio of medians can pair one round's stock with another's revstore)
    rounds: list[float] | None = None
    #: what the "stock" column holds when it is not stock Celery (e.g. "revstore, no name rules")
    baseline: str = ""
    #: the id pages quote the figure by, when it must outlive a change of wording (default: from the name)
    key: str = ""

    @property
    def ratio(self) -> float | None:
        """revstore / stock (the median of the rounds' ratios); whether higher is better depends on the unit."""
        if self.rounds:
            return statistics.median(self.rounds)
        if self.stock is None or self.stock <= 0 or self.value < 0:
            return None  # a difference within the noise has no meaningful ratio
        return self.value / self.stock

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("met" if self.met else "**missed**")
        stock = "—" if self.stock is None else fmt(self.stock, self.unit)
        if self.baseline:
            stock += f" ({self.baseline})"
        return [self.name, fmt(self.value, self.unit), stock, ratio_text(self.ratio, self.rounds), self.target, met]


def ratio_text(ratio: float | None, rounds: Sequence[float] | None) -> str:
    """``0.99 (0.97–1.01, 5 rounds)``: a median of rounds shows how far apart the rounds were."""
    if ratio is None:
        return ""
    if not rounds or len(rounds) < 2:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} ({min(rounds):.2f}–{max(rounds):.2f}, {len(rounds)} rounds)"


def turns(count: int, kinds: Sequence[str]) -> list[tuple[str, ...]]:
    """The order of ``kinds`` in each of ``count`` rounds, so each kind goes first, last and between equally.

    Rounds that take turns this way see a machine whose load drifts (a
    warming page cache, a neighbour's job) alike; always running stock first
    would hand it every first-in-round penalty.
    """
    orders = list(itertools.permutations(kinds))
    # a permutation and its reverse in turn: over any two rounds each kind's mean position is the same
    paired = [order for pair in zip(orders[: len(orders) // 2], reversed(orders)) for order in pair]
    return [paired[i % len(paired)] for i in range(count)]


def fmt(value: float, unit: str) -> str:
    """A number as people read it: thousands separated, sensible decimals."""
    if unit in ("ids/s", "rows/s", "tasks/s", "rows", "B/id", "conns", "errors"):
        text_ = f"{value:,.0f}"
    elif unit == "µs":
        text_ = f"{value:,.2f}" if value < 10 else f"{value:,.0f}"
    elif unit == "MiB":
        text_ = f"{value:,.1f}"
    elif unit == "ms":
        text_ = f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    else:
        text_ = f"{value:,.2f}"
    return f"{text_} {unit}"


HEADER = ["figure", "revstore", "stock Celery", "ratio", "target", ""]


def table(figures: Sequence[Figure], with_bench: bool = False) -> str:
    """The figures as one markdown table; ``with_bench`` adds which benchmark measured each."""
    header = (["benchmark"] if with_bench else []) + HEADER
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(([f"`{f.bench}`"] if with_bench else []) + f.cells()) + " |" for f in figures]
    return "\n".join(lines)


def report(title: str, figures: Sequence[Figure]) -> None:
    print(f"\n## {title}\n")
    print(table(figures))
    for f in figures:
        if f.note:
            print(f"- {f.name}: {f.note}")
    sys.stdout.flush()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: p99 of 100 samples is the 99th smallest."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(title: str, run: Callable[[bool], list[Figure]]) -> list[Figure]:
    """Command-line entry of one benchmark: ``--quick`` shrinks every size."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script works, measures nothing")
    args = parser.parse_args()
    figures = run(args.quick)
    report(title, figures)
    return figures


# --------------------------------------------------------------- database


@contextmanager
def fresh_store(**kwargs: Any) -> Iterator[RevocationStore]:
    """A migrated store in a new PostgreSQL schema, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    store = RevocationStore(PG_URL, schema=schema, **kwargs)
    try:
        migrate.upgrade(store)
        yield store
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def task_id(i: int) -> str:
    """The i-th benchmark task id; PostgreSQL's ``md5(i::text)::uuid::text`` is the same."""
    return str(uuid.UUID(hashlib.md5(str(i).encode()).hexdigest()))


def seed(store: RevocationStore, count: int, *, start: int = 0, expired: bool = False) -> None:
    """Revoke the ids ``task_id(start) ..`` (``count`` of them) with ``store.add``, as a client would.

    Setup, not measured: transactions of ``SEED_BATCH`` ids, each stamped
    with a version the clock handed out; the rows expire in 7 days, or
    (``expired``, for the cleanup benchmark) a millisecond after their write.
    """
    if count <= 0:
        return
    expires = 0.001 if expired else 7 * 86400
    for first in range(start, start + count, SEED_BATCH):
        store.add([task_id(i) for i in range(first, min(first + SEED_BATCH, start + count))], revoked_by="bench",
                  expires=expires)
    rev = store.engine.dialect.identifier_preparer.format_table(store.tables.revocations)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {rev}"))  # fresh_store is PostgreSQL: planner statistics for the reads


def write_statedb(path: Path, count: int) -> None:
    """A stock ``--statedb`` file holding ids ``0..count-1``, as ``Persistent.save`` writes it.

    shelve key ``zrevoked`` = zlib(pickle(LimitedSet)); the set has no cap,
    like the stock worker it is loaded into (``CELERY_WORKER_REVOKES_MAX=0``).
    """
    from celery.utils.collections import LimitedSet
    from kombu.serialization import pickle_protocol

    revoked = LimitedSet(maxlen=0, expires=10800)
    now = time.monotonic()
    revoked.update({task_id(i): now for i in range(count)})
    with shelve.open(str(path), protocol=pickle_protocol, writeback=True) as db:
        db.update({"__proto__": 3, "zrevoked": zlib.compress(pickle.dumps(revoked, protocol=pickle_protocol)), "clock": 0})


# ---------------------------------------------------------------- workers


def redis_db() -> redis.Redis:
    return redis.Redis.from_url(BROKER)


def cleanup_redis(prefix: str) -> None:
    """Delete every key a run left behind (queues, counters), by its run prefix."""
    r = redis_db()
    for key in r.scan_iter(match=f"*{prefix}*", count=1000):
        r.delete(key)


class Worker(WorkerProcess):
    """One real ``celery -A bench.benchapp worker`` process group (``revstore.processes``)."""

    def __init__(self, name: str, queue: str, logdir: Path, store: RevocationStore | None = None,
                 statedb: Path | None = None, concurrency: int = 2, mingle: bool = False,
                 env: dict[str, str] | None = None, revokes_max: int = 0, cpus: str | None = None) -> None:
        """``store`` None: stock Celery (revstore's step stays inert); ``statedb``: stock ``--statedb``.

        ``revokes_max`` is Celery's cap on its revoked set (``CELERY_WORKER_REVOKES_MAX``):
        0, no cap, by default, since stock at its default cap (``STOCK_REVOKES_MAX``) keeps
        only 50,000 ids and so cannot hold what revstore holds; the start-up and memory
        benchmarks also start stock at the default cap, to show what lifting it costs.
        ``cpus`` pins the whole worker (main process and pool) with ``taskset -c``.
        """
        super().__init__("bench.benchapp", f"{name}@bench", queue, logdir / f"{name}.log", {}, ROOT,
                         concurrency=concurrency, mingle=mingle, heartbeat=False,
                         args=["--statedb", str(statedb)] if statedb is not None else [])
        self.name, self.store, self.extra_env = name, store, env or {}
        self.revokes_max, self.cpus = revokes_max, cpus
        #: the run's own folder unless ``env`` names one: a bench never writes the user's state folder
        self.state_dir = logdir / f"{name}.state"

    def command(self) -> list[str]:
        return (["taskset", "-c", self.cpus] if self.cpus else []) + super().command()

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ENV.values()}
        env.update(PYTHONPATH=str(ROOT), BENCH_BROKER=BROKER, BENCH_BACKEND=BACKEND, BENCH_QUEUE=self.queue,
                   BENCH_NAME=self.name, CELERY_WORKER_REVOKES_MAX=str(self.revokes_max))
        if self.store is not None:
            env["REVSTORE_URL"] = self.store.url.render_as_string(hide_password=False)
            if self.store.tables.schema:
                env["REVSTORE_SCHEMA"] = self.store.tables.schema
            env["REVSTORE_STATE_DIR"] = str(self.state_dir)
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = False, timeout: float = 120) -> Worker:
        self.env = self.environment()
        super().start(wait, timeout)
        return self

    def wait_ready(self, timeout: float = 120, error: type[Exception] = TimeoutError) -> Worker:  # type: ignore[override]
        super().wait_ready(timeout, error)
        return self

    def rss(self) -> tuple[float, float]:
        """Resident and peak resident memory of the main process, MiB."""
        assert self.proc is not None
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def cpu_seconds(self) -> float:
        """CPU time of the whole worker so far (main process and pool children), to the nanosecond."""
        assert self.proc is not None
        return sum(cpu_seconds(pid) for pid in process_tree(self.proc.pid))


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc/PID/task/TID/children``."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """Time ``pid`` (all its threads) spent on a CPU; 0 once it is gone.

    ``/proc/PID/schedstat`` counts nanoseconds but for one thread only (the
    process's first): each thread's is summed from ``/proc/PID/task``.
    ``/proc/PID/stat`` covers every thread but rounds to clock ticks
    (10 ms), coarser than the differences measured here.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total / 1e9


def bench_cpus(needed: int) -> str | None:
    """CPUs to pin a measured worker to, leaving CPU 0 to the benchmark and the services; None on a small machine.

    Pinning keeps a worker's processes on the same cores in every round (no
    migrations, warm caches); on fewer than ``needed`` + 1 CPUs there is
    nothing to set apart, and the workers float like everything else.
    """
    available = sorted(os.sched_getaffinity(0))
    if len(available) < needed + 1:
        return None
    return ",".join(str(cpu) for cpu in available[-needed:])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, *workers: Worker, interval: float = 0.01) -> Any:
    """``revstore.processes.wait_for``: poll ``predicate`` until truthy; fail at once if one of ``workers`` died."""
    return processes.wait_for(predicate, timeout, what, interval, alive=workers)


class Run:
    """One benchmark run: its id, log folder, and the workers to stop at the end."""

    def __init__(self, name: str) -> None:
        self.id = f"bench{uuid.uuid4().hex[:8]}"
        self.logdir = Path(tempfile.mkdtemp(prefix=f"revstore-{name}-"))
        self.workers: list[Worker] = []

    def queue(self, name: str) -> str:
        return f"{self.id}-{name}"

    def key(self, name: str) -> str:
        return f"{self.id}:{name}"

    def worker(self, name: str, **kwargs: Any) -> Worker:
        w = Worker(f"{name}-{self.id}", kwargs.pop("queue", None) or self.queue(name), self.logdir, **kwargs)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        cleanup_redis(self.id)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def client_app() -> Any:
    """The bench app as a client (sends tasks, broadcasts), without revstore's URL."""
    for key in ENV.values():  # the client must not write through: stock broadcasts stay stock
        os.environ.pop(key, None)
    os.environ.update(BENCH_BROKER=BROKER, BENCH_BACKEND=BACKEND)
    from bench import benchapp

    return benchapp
