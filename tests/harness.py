"""The tests' one helpers module: server URLs, real ``celery worker`` processes, and the checks tests share.

Starting, waiting for and stopping worker processes is ``revstore.processes``
(the demo and the benchmarks use it too); this module adds what only tests
need: a cluster of workers per test, each with its own queues, output folder,
state folder and kombu bookkeeping keys.  Test modules import helpers from
here, never from one another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from revstore import __version__, processes
from revstore.processes import WorkerProcess

TESTS = Path(__file__).resolve().parent
CELERY = [sys.executable, "-m", "celery"]

# ------------------------------------------------------------------ servers
#: (``.ci/services`` starts them; a test fails, never skips, when one does not answer)
PG_HOST, PG_PORT, MYSQL_PORT = "127.0.0.1", 5432, 3306
PG_BASE = os.environ.get("REVSTORE_TEST_PG", f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test")
#: a server URL without a database: each test gets its own database on it
MYSQL_BASE = os.environ.get("REVSTORE_TEST_MYSQL", f"mysql://root@{PG_HOST}:{MYSQL_PORT}/")
#: the PgBouncer ``.ci/services`` starts in transaction mode in front of PostgreSQL
PGBOUNCER_PORT = 6432
REDIS_URL = os.environ.get("REVSTORE_TEST_REDIS", f"redis://{PG_HOST}:6379")
#: The broker of the worker tests (tests/workerapp.py); the CI matrix also runs them on RabbitMQ.
BROKER_URL = os.environ.get("TEST_BROKER", f"{REDIS_URL}/5")
#: The worker tests' result backend (tests/workerapp.py).
RESULT_URL = os.environ.get("TEST_BACKEND", f"{REDIS_URL}/6")
#: The Redis transport's visibility_timeout in tests/workerapp.py (TEST_VISIBILITY).
VISIBILITY = float(os.environ.get("TEST_VISIBILITY", "4"))

#: The release after this one, whose migrations the ``later_release`` fixture adds.
LATER_RELEASE = "{}.{}.0".format(__version__.split(".")[0], int(__version__.split(".")[1]) + 1)


def mysql_url(database: str) -> str:
    return MYSQL_BASE.rstrip("/") + "/" + database


def make_store(backend: str, request: Any, **kwargs: Any) -> Any:
    """A migrated ``RevocationStore`` on a fresh SQLite file, PostgreSQL schema or MariaDB database."""
    from revstore import migrate
    from revstore.store import RevocationStore

    if backend == "sqlite":
        store = RevocationStore(request.getfixturevalue("sqlite_url"), **kwargs)
    elif backend == "mariadb":
        store = RevocationStore(mysql_url(request.getfixturevalue("mysql_database")), **kwargs)
    else:
        store = RevocationStore(PG_BASE, schema=request.getfixturevalue("pg_schema"), **kwargs)
    migrate.upgrade(store)
    request.addfinalizer(store.dispose)
    return store


# ------------------------------------------------------------------ waiting

#: ``revstore.processes.wait_for``, failing the test (AssertionError) on timeout
wait_for = partial(processes.wait_for, error=AssertionError)


def await_redelivery(delivered_at: float) -> None:
    """Wait until a SIGKILLed worker's unacknowledged messages can go to the next worker.

    Time is the subject here: on Redis, kombu gives them back only once they
    are ``visibility_timeout`` old: a starting worker sweeps once, and older
    kombu (5.3.0 among them) sweeps again only every 100 s, so a worker
    restarted sooner would not see them in a test's lifetime (stock Celery
    alike).  RabbitMQ redelivers at once.  ``delivered_at`` is a
    ``time.monotonic()`` taken after the worker held them.
    """
    time.sleep(max(0.0, delivered_at + VISIBILITY + 1.0 - time.monotonic()))


# ------------------------------------------------------------------ workers


class Worker(WorkerProcess):
    """A ``celery -A workerapp worker`` (tests/workerapp.py) named ``NAME@testhost``."""

    def __init__(self, name: str, queue: str, env: dict[str, str], log: Path, args: list[str] | None = None,
                 pool: str = "prefork", mingle: bool = False) -> None:
        super().__init__("workerapp", f"{name}@testhost", queue, log, env, TESTS, pool=pool, mingle=mingle,
                         args=list(args or []))
        self.name = name

    def start(self, wait: bool = True, timeout: float = 45) -> Worker:
        super().start(wait, timeout)
        return self

    def wait_ready(self, timeout: float = 45, error: type[Exception] = AssertionError) -> None:
        super().wait_ready(timeout, error)


class Cluster:
    """The workers of one test, sharing an output folder and a database."""

    def __init__(self, tmp: Path, url: str, schema: str | None, **settings: Any) -> None:
        self.tmp = tmp
        self.out = tmp / "out"
        self.out.mkdir(exist_ok=True)
        self.run_id = uuid.uuid4().hex[:8]
        self.env = dict(os.environ)
        self.env.update({
            "TEST_OUT": str(self.out),
            "REVSTORE_URL": url,
            "PYTHONPATH": str(TESTS),
            "REVSTORE_STATE_DIR": str(tmp / "state"),  # spool and snapshot files, per test
            "TEST_UNACKED_PREFIX": f"revstore-test-{self.run_id}-",  # see tests/workerapp.py
        })
        if schema:
            self.env["REVSTORE_SCHEMA"] = schema
        for key, value in settings.items():
            self.env["TEST_" + key.upper()] = str(value)
        self.workers: list[Worker] = []

    def queue(self, name: str) -> str:
        return f"q-{self.run_id}-{name}"

    def worker(self, name: str, queue: str | None = None, args: list[str] | None = None, pool: str = "prefork",
               release: Any = None, mingle: bool = False, **env: str) -> Worker:
        """``release`` (a ``releases.Release``) runs an earlier revstore's worker instead of this checkout's."""
        w = Worker(f"{name}-{self.run_id}", self.queue(queue or name), {**self.env, **env},
                   self.tmp / f"{name}.log", args, pool, mingle=mingle)
        if release is not None:
            w.python, w.cwd = str(release.python), release.tests
            w.env["PYTHONPATH"] = str(release.tests)
        self.workers.append(w)
        return w

    def ran(self, tag: str) -> bool:
        return (self.out / f"started-{tag}").exists()

    def finished(self, tag: str) -> bool:
        return (self.out / f"done-{tag}").exists()

    def close(self) -> None:
        processes.stop_all(self.workers)


def state_files(cluster: Cluster, worker: Worker, suffix: str) -> list[Path]:
    """The worker's spool, snapshot or journal files in the cluster's state folder."""
    return sorted((cluster.tmp / "state").glob(f"{worker.nodename}.*{suffix}"))


# ------------------------------------------------------------------ tasks and control


def send(celery_app: Any, queue: str, tag: str, **options: Any) -> str:
    """Send ``workerapp.record(tag)`` to ``queue``; its id (``task_id=`` or ``TAG-xxxxxx``)."""
    task_id = options.pop("task_id", None) or f"{tag}-{uuid.uuid4().hex[:6]}"
    celery_app.record.apply_async((tag,), options.pop("kwargs", None) or {}, queue=queue, task_id=task_id, **options)
    return task_id


def revoked_on(app: Any, worker: WorkerProcess, timeout: float = 2) -> set[str]:
    """The ids in ``worker``'s revoked set (``inspect revoked``): what it would drop now."""
    replies = app.control.inspect([worker.nodename], timeout=timeout).revoked() or {}
    return set(replies.get(worker.nodename, []))


def held_by(celery_app: Any, worker: WorkerProcess, task_id: str) -> bool:
    """``worker`` holds ``task_id`` as a scheduled (ETA) task (``inspect scheduled``)."""
    replies = celery_app.app.control.inspect([worker.nodename], timeout=1).scheduled() or {}
    return any(entry["request"]["id"] == task_id for entry in replies.get(worker.nodename, []))


def running_pid(celery_app: Any, worker: WorkerProcess, task_id: str) -> int:
    """The pid of the pool process running ``task_id`` on ``worker`` (``inspect active``)."""
    def pid() -> int | None:
        replies = celery_app.app.control.inspect([worker.nodename], timeout=1).active() or {}
        return next((t["worker_pid"] for t in replies.get(worker.nodename, []) if t["id"] == task_id), None)
    return wait_for(pid, 10, what=f"{task_id} to be active on {worker.nodename}")


def status(celery_app: Any, worker: WorkerProcess, timeout: float = 2) -> dict[str, Any]:
    """The worker's ``revstore_status`` reply; ``{}`` when it did not answer in time."""
    replies = celery_app.app.control.inspect([worker.nodename], timeout=timeout).revstore_status() or {}
    return replies.get(worker.nodename) or {}


def heard_by(celery_app: Any, *workers: WorkerProcess) -> None:
    """Control messages reach a worker in order: once it answers a ping, it has heard what came before."""
    names = [w.nodename for w in workers]
    replies = celery_app.app.control.ping(destination=names, timeout=10, limit=len(names))
    assert {name for reply in replies for name in reply} == set(names), replies


def discarded(workers: WorkerProcess | list[WorkerProcess], *task_ids: str, task: str = "workerapp.record",
              times: int = 1) -> bool:
    """The log of ``workers`` (since each last started) says they dropped every one of ``task_ids`` as revoked.

    Celery logs this when a revoked task reaches the worker, or comes due,
    and is not run: the event a negative check ("the revoked task did not
    run") waits for instead of sleeping.  ``times``: messages with the same id.
    """
    logs = "".join(w.output(since_start=True) for w in (workers if isinstance(workers, list) else [workers]))
    return all(logs.count(f"Discarding revoked task: {task}[{task_id}]") >= times for task_id in task_ids)


# ------------------------------------------------------------------ the revstore command


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def revstore(*args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 120) -> Result:
    """``revstore ARGS`` with REVSTORE_* cleared unless given in ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("REVSTORE_")}
    base.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "revstore.cli", *args],
        capture_output=True, text=True, env=base, cwd=cwd, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr, no traceback."""
    assert result.code != 0, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def cli(cluster: Cluster, *args: str) -> str:
    """``revstore ARGS`` with the cluster's environment; its stdout (it must succeed)."""
    result = revstore(*args, env=cluster.env, timeout=60)
    assert result.code == 0, result.err
    return result.out


def csrf_of(page: Any) -> str:
    """The CSRF token of a console form page (an ``httpx.Response``)."""
    import re

    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)
