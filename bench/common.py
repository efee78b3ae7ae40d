"""What every benchmark shares: services, seeding, real workers, figures.

The benchmarks measure real ``celery worker`` processes (prefork, Redis
broker) on the local PostgreSQL, stock and revstore in the same run, so a
ratio compares like with like on whatever else the machine is doing.  Each
run works in its own PostgreSQL schema and its own queue names on Redis
databases 9 and 8 (the tests use 5, 6 and 10-15), so it can run beside the test suite;
``REVSTORE_BENCH_BROKER`` / ``REVSTORE_BENCH_BACKEND`` (whole URLs) move it to other
databases, for engineers sharing one Redis.
"""

from __future__ import annotations

import argparse
import hashlib
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

    @property
    def ratio(self) -> float | None:
        """revstore / stock; whether higher is better depends on the unit."""
        if self.stock is None or self.stock <= 0 or self.value < 0:
            return None  # a difference within the noise has no meaningful ratio
        return self.value / self.stock

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("met" if self.met else "**missed**")
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}"
        stock = "—" if self.stock is None else fmt(self.stock, self.unit)
        return [self.name, fmt(self.value, self.unit), stock, ratio, self.target, met]


def fmt(value: float, unit: str) -> str:
    """A number as people read it: thousands separated, sensible decimals."""
    if unit in ("ids/s", "rows/s", "tasks/s", "rows", "B/id", "conns", "errors"):
        text_ = f"{value:,.0f}"
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
                 env: dict[str, str] | None = None) -> None:
        """``store`` None: stock Celery (revstore's step stays inert); ``statedb``: stock ``--statedb``."""
        super().__init__("bench.benchapp", f"{name}@bench", queue, logdir / f"{name}.log", {}, ROOT,
                         concurrency=concurrency, mingle=mingle, heartbeat=False,
                         args=["--statedb", str(statedb)] if statedb is not None else [])
        self.name, self.store, self.extra_env = name, store, env or {}

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ENV.values()}
        env.update(PYTHONPATH=str(ROOT), BENCH_BROKER=BROKER, BENCH_BACKEND=BACKEND, BENCH_QUEUE=self.queue,
                   BENCH_NAME=self.name, CELERY_WORKER_REVOKES_MAX="0")
        if self.store is not None:
            env["REVSTORE_URL"] = self.store.url.render_as_string(hide_password=False)
            if self.store.tables.schema:
                env["REVSTORE_SCHEMA"] = self.store.tables.schema
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
