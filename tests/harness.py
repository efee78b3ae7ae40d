"""Real ``celery worker`` processes for tests: start, wait ready, SIGKILL, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
CELERY = [sys.executable, "-m", "celery"]
#: The Redis transport's visibility_timeout in tests/workerapp.py (TEST_VISIBILITY).
VISIBILITY = float(os.environ.get("TEST_VISIBILITY", "4"))


def await_redelivery(delivered_at: float) -> None:
    """Wait until a SIGKILLed worker's unacknowledged messages can go to the next worker.

    On Redis, kombu gives them back only once they are ``visibility_timeout``
    old: a starting worker sweeps once, and older kombu (5.3.0 among them) sweeps again
    only every 100 s, so a worker restarted sooner would not see them in a
    test's lifetime (stock Celery alike).  RabbitMQ redelivers at once.
    ``delivered_at`` is a ``time.monotonic()`` taken after the worker held them.
    """
    time.sleep(max(0.0, delivered_at + VISIBILITY + 1.0 - time.monotonic()))


def revoked_on(app: Any, worker: Worker, timeout: float = 2) -> set[str]:
    """The ids in ``worker``'s revoked set (``inspect revoked``): what it would drop now."""
    replies = app.control.inspect([worker.nodename], timeout=timeout).revoked() or {}
    return set(replies.get(worker.nodename, []))


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Worker:
    name: str
    queue: str
    env: dict[str, str]
    log: Path
    args: list[str] = field(default_factory=list)
    #: Celery's execution pool: prefork, threads, gevent, eventlet or solo
    pool: str = "prefork"
    # another release's venv interpreter and tests folder (its own workerapp): tests/releases.py
    python: str = sys.executable
    cwd: Path = TESTS
    #: run Celery's mingle step (the harness default is --without-mingle)
    mingle: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def nodename(self) -> str:
        return f"{self.name}@testhost"

    def start(self, wait: bool = True) -> Worker:
        cmd = [self.python, "-m", "celery", "-A", "workerapp", "worker", "-P", self.pool, "-c", "2",
               "-n", self.nodename, "-Q", self.queue, "-l", "info", "--without-gossip", *self.args]
        if not self.mingle:
            cmd.append("--without-mingle")
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 45) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            return " ready." in self.output()[self._log_offset:]
        wait_for(ready, timeout, what=f"worker {self.name} ready")

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or `kill -9` would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def begin_stop(self) -> None:
        """Ask for a warm shutdown without waiting (stop several workers at once)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20, signalled: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if not signalled:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


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
                   self.tmp / f"{name}.log", args or [], pool, mingle=mingle)
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
        for w in self.workers:
            w.begin_stop()
        for w in self.workers:
            w.stop(signalled=True)
