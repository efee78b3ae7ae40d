"""The demo's worker processes: real ``celery worker`` nodes started, SIGKILLed, restarted and stopped.

Apart from the story (:mod:`revstore.demo`) because this is process
handling, the part of the demo that has to be right on every platform:
process groups, so one signal reaches the pool too, and logs per start.
"""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import processes


class DemoError(Exception):
    """The demo could not tell its story (a worker did not start, a timeout)."""


#: ``revstore.processes.wait_for``, raising DemoError on timeout
wait_for = partial(processes.wait_for, error=DemoError)


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
        cmd = processes.worker_command("revstore._demo_app", self.nodename, self.queue, heartbeat=False)
        self.proc = processes.spawn(cmd, self.log, self.env, self.workdir, append=False)

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


_killpg = processes.killpg


def stop_all(workers: list[Worker]) -> None:
    """Stop every worker, in parallel: each has its own warm shutdown to do."""
    for worker in workers:
        worker.request_stop()
    for worker in workers:
        worker.finish_stop()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


process_alive = processes.process_alive
