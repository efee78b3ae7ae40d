"""The demo's worker processes: real ``celery worker`` nodes started, SIGKILLed, restarted and stopped.

Apart from the story (:mod:`revstore.demo`) because this is process
handling, the part of the demo that has to be right on every platform:
process groups, so one signal reaches the pool too, and logs per start.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DemoError(Exception):
    """The demo could not tell its story (a worker did not start, a timeout)."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it is truthy; DemoError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Worker:
    """One ``celery worker`` node; every (re)start logs to its own file."""

    label: str
    queue: str
    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def nodename(self) -> str:
        return f"demo-{self.label.lower()}@localhost"

    @property
    def log(self) -> Path:
        return self.workdir / "logs" / f"worker-{self.label.lower()}-{self.runs}.log"

    def start(self) -> None:
        """Start the worker in its own process group, so one signal reaches its pool too."""
        self.runs += 1
        cmd = [sys.executable, "-m", "celery", "-A", "revstore._demo_app", "worker",
               "-P", "prefork", "-c", "2", "-n", self.nodename, "-Q", self.queue, "-l", "info",
               "--without-mingle", "--without-gossip", "--without-heartbeat"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise DemoError(f"worker {self.label} exited before it was ready; its log ends:\n"
                                + _tail(self.output()))
            return " ready." in self.output()
        wait_for(ready, timeout, f"worker {self.label} to be ready")

    def loaded_count(self) -> str | None:
        """How many revocations the worker loaded at start, as its log says."""
        match = re.search(r"revstore: loaded (\d+) revocations", self.output())
        return match.group(1) if match else None

    def logged(self, text: str) -> bool:
        return text in self.output()

    def flagged_revoked(self, task_ids: list[str]) -> bool:
        """True once Celery logged every id in ``task_ids`` as revoked (it logs a set: any order)."""
        flagged: set[str] = set()
        for line in self.output().splitlines():
            _, found, ids = line.partition("Tasks flagged as revoked: ")
            if found:
                flagged.update(i.strip() for i in ids.split(","))
        return flagged.issuperset(task_ids)

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or ``kill -9`` would."""
        if self.proc is None:
            return
        _killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def request_stop(self) -> None:
        """Ask for a warm shutdown: the main process stops its own pool."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def finish_stop(self, timeout: float = 15.0) -> None:
        """Wait for the warm shutdown, then SIGKILL whatever is left of the group."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        _killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(workers: list[Worker]) -> None:
    """Stop every worker, in parallel: each has its own warm shutdown to do."""
    for worker in workers:
        worker.request_stop()
    for worker in workers:
        worker.finish_stop()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


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
