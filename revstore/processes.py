"""Real ``celery worker`` processes: start one, wait until it is ready, SIGKILL it, stop it.

``revstore demo`` starts its workers with this module, and so do the test
suite (``tests/harness.py``) and the benchmarks (``bench/common.py``): one
way to build the command line, one process group per worker (a signal
reaches its pool too, as the OOM killer's or ``kill -9`` would), one
``wait_for``.  Nothing here knows about revstore's settings: the caller
passes the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float, what: str = "condition", interval: float = 0.1,
             error: type[Exception] = TimeoutError, alive: Sequence[WorkerProcess] = ()) -> Any:
    """Poll ``predicate`` until it is truthy and return its value.

    Raises ``error`` after ``timeout`` seconds, and ``WorkerExited`` at once
    if one of the ``alive`` workers has exited meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for worker in alive:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class WorkerExited(RuntimeError):
    """A worker process ended while it was expected to run."""


def worker_command(app: str, nodename: str, queue: str, *, pool: str = "prefork", concurrency: int = 2,
                   mingle: bool = False, heartbeat: bool = True, python: str = sys.executable,
                   args: Sequence[str] = ()) -> list[str]:
    """The ``celery worker`` command line: gossip always off, mingle off unless asked for."""
    cmd = [python, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency), "-n", nodename,
           "-Q", queue, "-l", "info", "--without-gossip"]
    if not mingle:
        cmd.append("--without-mingle")
    if not heartbeat:
        cmd.append("--without-heartbeat")
    return cmd + list(args)


def spawn(cmd: Sequence[str], log: Path, env: dict[str, str], cwd: Path | str, append: bool = True) -> subprocess.Popen[bytes]:
    """Run ``cmd`` in its own process group (session), stdout and stderr into ``log``."""
    with open(log, "ab" if append else "wb") as out:
        return subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def killpg(pgid: int, signum: int) -> None:
    """Signal a process group; one that is already gone is not an error."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class WorkerProcess:
    """One ``celery worker`` process group, logging to ``log`` (appended to on every start)."""

    app: str
    nodename: str
    queue: str
    log: Path
    env: dict[str, str]
    cwd: Path | str
    pool: str = "prefork"
    concurrency: int = 2
    #: run Celery's mingle step (off by default: it waits for replies from every other node)
    mingle: bool = False
    heartbeat: bool = True
    #: extra command-line arguments
    args: list[str] = field(default_factory=list)
    python: str = sys.executable
    proc: subprocess.Popen[bytes] | None = None
    #: the log's size when the current process started: ``output(since_start=True)`` reads past it
    log_offset: int = 0
    #: wall clock time of the last start
    started_at: float = 0.0

    def command(self) -> list[str]:
        return worker_command(self.app, self.nodename, self.queue, pool=self.pool, concurrency=self.concurrency,
                              mingle=self.mingle, heartbeat=self.heartbeat, python=self.python, args=self.args)

    def start(self, wait: bool = False, timeout: float = 45) -> WorkerProcess:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.started_at = time.time()
        self.proc = spawn(self.command(), self.log, self.env, self.cwd)
        if wait:
            self.wait_ready(timeout)
        return self

    def output(self, since_start: bool = False) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[self.log_offset:] if since_start else text

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """``WorkerExited`` (with the log's end) if the worker has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise WorkerExited(f"worker {self.nodename} exited {self.proc.returncode}:\n{self.output()[-3000:]}")

    def wait_ready(self, timeout: float = 45, error: type[Exception] = TimeoutError) -> None:
        """Until this start's log says `` ready.``; ``WorkerExited`` if the process ends first."""
        wait_for(lambda: " ready." in self.output(since_start=True), timeout, f"worker {self.nodename} ready",
                 error=error, alive=[self])

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or ``kill -9`` would."""
        if self.alive():
            assert self.proc is not None
            killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def begin_stop(self) -> None:
        """Ask for a warm shutdown (SIGTERM to the group) without waiting: stop several workers at once."""
        if self.alive():
            assert self.proc is not None
            killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20, signalled: bool = False) -> None:
        """Warm shutdown; SIGKILL if it takes longer than ``timeout``.  ``signalled``: ``begin_stop`` ran."""
        if not self.alive():
            return
        assert self.proc is not None
        if not signalled:
            killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def stop_all(workers: Sequence[WorkerProcess], timeout: float = 20) -> None:
    """Stop every worker, in parallel: each has its own warm shutdown to do."""
    for worker in workers:
        worker.begin_stop()
    for worker in workers:
        worker.stop(timeout, signalled=True)
