"""The Celery app the benchmark workers run (``celery -A bench.benchapp worker``).

Configured from the environment the benchmark sets, so one module serves
stock and revstore workers alike: without ``REVSTORE_URL`` the revstore step
is inert and the worker is stock Celery.  Tasks report to Redis, not files,
so a measurement costs one round trip whichever process runs the task.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

import revstore

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/9")
PROBE_PREFIX = "probe-"

app = Celery("benchapp", broker=BROKER, backend=os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/8"))
app.conf.update(
    task_default_queue=os.environ.get("BENCH_QUEUE", "revstore-bench"),
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    # a benchmark whose workers must hear only each other's broadcasts (mingle) names its own
    control_exchange=os.environ.get("BENCH_CONTROL_EXCHANGE", "celery"),
)
if os.environ.get("BENCH_LISTEN") is not None:
    app.conf.revstore_listen = os.environ["BENCH_LISTEN"]
revstore.install(app)

_redis: redis.Redis | None = None


def results() -> redis.Redis:
    """One Redis client per process (pool children included), made on first use."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    return _redis


@app.task
def mark(key: str) -> None:
    """Record when a worker ran its first task (start-up probe)."""
    results().set(key, repr(time.time()), nx=True)


@app.task
def count(key: str, total: int) -> None:
    """A trivial task that records when the first and the last of ``total`` ran."""
    r = results()
    n = r.incr(key)
    if n == 1:
        r.set(f"{key}:first", repr(time.time()))
    if n == total:
        r.set(f"{key}:last", repr(time.time()))


def _watch_probes() -> None:
    """Record when probe revocations land in this worker's memory (propagation).

    Wraps ``WorkerMemory.apply``, the one place synced rows enter Celery's
    revoked set, so the time is when the worker really holds the id.
    """
    from revstore.memory import WorkerMemory

    original = WorkerMemory.apply
    key = os.environ["BENCH_PROBE_KEY"]
    host = os.environ.get("BENCH_NAME", str(os.getpid()))

    def apply(self: WorkerMemory, rows: Any) -> Any:
        rows = list(rows)
        result = original(self, rows)
        now = time.time()
        seen = [r.target.value for r in rows if r.target.value.startswith(PROBE_PREFIX) and r.active]
        if seen:
            results().rpush(key, *[f"{host} {value} {now!r}" for value in seen])
        return result

    WorkerMemory.apply = apply  # type: ignore[method-assign]


if os.environ.get("BENCH_PROBE_KEY"):
    _watch_probes()
