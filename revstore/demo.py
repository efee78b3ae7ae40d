"""``revstore demo``: the whole story on embedded defaults, no server needed.

Everything lives in one folder: the revocation table in a SQLite file, the
broker as kombu's filesystem transport (fanout included, so
``app.control.revoke`` and ``inspect`` broadcasts work), results in Celery's
``file://`` backend.  The workers are real ``celery worker`` processes with
the prefork pool, started, SIGKILLed and restarted as in production.

The story:

1. an admin creates the schema (workers never run DDL);
2. worker A holds ETA tasks in memory; some are revoked by broadcast, and a
   running task is revoked with ``terminate=True``;
3. worker A is SIGKILLed and restarted: the revoked ETA tasks, given back by
   the broker, must not run (stock Celery, even with ``--statedb``, forgets
   revokes on SIGKILL and runs them);
4. worker B is offline when one of its tasks is revoked in the table; once
   started it must not run it;
5. un-revoked control tasks must run on both workers, proving the messages
   did reach them.

Tasks leave files in ``<workdir>/ran/``; the verdict comes from those files,
the worker logs only add detail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from . import processes

#: Seconds the ETA tasks wait: long enough to revoke them and SIGKILL worker A
#: before they are due, short enough to keep the demo well under a minute.
ETA_COUNTDOWN = 8.0
#: How long the running task would work if nobody terminated it.
LONG_TASK_SECONDS = 30.0
#: Marker file: a folder holding it is a demo folder, safe to wipe.
MARKER = ".revstore-demo"
#: Environment prefixes kept away from the demo: a user's REVSTORE_URL or
#: CELERY_BROKER_URL must never point the demo at real infrastructure.
SCRUBBED_ENV = ("REVSTORE_", "CELERY_")


class DemoError(Exception):
    """The demo could not tell its story (a worker did not start, a timeout)."""


# --------------------------------------------------------------- output


class Narrator:
    """Prints short, timestamped lines so the story reads as it happens."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, text: str) -> None:
        print(f"[{self.elapsed():5.1f}s] {text}", flush=True)

    def note(self, text: str) -> None:
        print(f"         {text}", flush=True)


#: ``revstore.processes.wait_for``, raising DemoError on timeout
wait_for = partial(processes.wait_for, error=DemoError)


# ---------------------------------------------------------------- workers


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


# ------------------------------------------------------------------ tasks


@dataclass
class Job:
    """One task of the story and what should become of it."""

    tag: str
    queue: str
    expect: str  # "not run", "run" or "terminated"
    how: str = "-"
    task_id: str = ""
    countdown: float = 0.0
    eta: float = 0.0
    evidence: list[str] = field(default_factory=list)

    @property
    def revoked(self) -> bool:
        return self.expect != "run"


class Ran:
    """Reads what tasks left in ``<workdir>/ran/``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def started(self, tag: str) -> dict[str, Any] | None:
        path = self.folder / f"{tag}.started"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def finished(self, tag: str) -> bool:
        return (self.folder / f"{tag}.done").exists()

    def progress(self, tag: str) -> int:
        try:
            return int((self.folder / f"{tag}.progress").read_text() or 0)
        except (OSError, ValueError):
            return 0


# ------------------------------------------------------------------ setup


def prepare_workdir(workdir: str | None) -> Path:
    """A fresh temp folder, or ``workdir`` wiped (only if it is empty or a previous demo's)."""
    if workdir is None:
        path = Path(tempfile.mkdtemp(prefix="revstore-demo-"))
    else:
        path = Path(workdir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        entries = list(path.iterdir())
        if entries and not (path / MARKER).exists():
            raise DemoError(f"{path} is not empty and holds no {MARKER} marker; "
                            "refusing to wipe it (pass an empty or new folder)")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    (path / MARKER).write_text("created by `revstore demo`; the next run with --workdir wipes this folder\n")
    (path / "logs").mkdir()
    return path


@contextmanager
def scrubbed_environment() -> Iterator[None]:
    """Hide REVSTORE_* and CELERY_* variables while the demo runs.

    The demo's settings are all explicit; a user's production REVSTORE_URL,
    REVSTORE_SCHEMA or CELERY_BROKER_URL must not leak into it.
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith(SCRUBBED_ENV)}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks stop the workers."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_env(workdir: Path, url: str) -> dict[str, str]:
    """What the workers' ``revstore._demo_app`` is configured from."""
    from ._demo_app import WORKDIR_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV)}
    env.update({
        WORKDIR_ENV: str(workdir),
        "REVSTORE_URL": url,
        "REVSTORE_SYNC_INTERVAL": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env


# ------------------------------------------------------------------ story


class Demo:
    """The story, one method per step; ``run`` returns the exit code."""

    def __init__(self, workdir: Path) -> None:
        from ._demo_app import create_app, prepare_folders
        from .store import RevocationStore

        self.workdir = workdir
        prepare_folders(workdir)
        self.url = f"sqlite:///{workdir / 'revstore.sqlite3'}"
        self.say = Narrator()
        self.ran = Ran(workdir / "ran")
        self.store = RevocationStore(self.url)
        self.app = create_app(workdir, self.url)
        self.task = self.app.tasks["revstore_demo.work"]
        env = worker_env(workdir, self.url)
        self.a = Worker("A", "a", workdir, env)
        self.b = Worker("B", "b", workdir, env)
        self.jobs: dict[str, Job] = {}

    # -- helpers

    def send(self, job: Job, *args: Any, countdown: float | None = None) -> Job:
        result = self.task.apply_async((job.tag, *args), queue=job.queue, countdown=countdown)
        job.task_id = result.id
        job.countdown = countdown or 0.0
        job.eta = time.time() + job.countdown
        self.jobs[job.tag] = job
        return job

    def start(self, *workers: Worker) -> None:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
            loaded = worker.loaded_count()
            detail = f"loaded {loaded} revocations from the table before its first task" if loaded else "ready"
            self.say.note(f"worker {worker.label} (queue {worker.queue}, prefork, 2 processes): {detail}")

    def held_by_a(self, jobs: list[Job]) -> bool:
        """Ask worker A over the broadcast channel (inspect) which ETA tasks it holds."""
        replies = self.app.control.inspect([self.a.nodename], timeout=1).scheduled() or {}
        held = {entry["request"]["id"] for entry in replies.get(self.a.nodename, [])}
        return all(job.task_id in held for job in jobs)

    # -- 1

    def create_schema(self) -> None:
        from . import migrate

        migrate.upgrade(self.store)
        self.say.step(f"1. schema created in revstore.sqlite3 at {migrate.current_revision(self.store)} "
                      "(an admin step: workers never run DDL)")

    # -- 2

    def worker_a_holds_and_revokes(self) -> None:
        self.say.step("2. start worker A")
        self.start(self.a)
        eta_jobs = [
            self.send(Job("a-revoked-1", "a", "not run", "broadcast revoke"), countdown=ETA_COUNTDOWN),
            self.send(Job("a-revoked-2", "a", "not run", "broadcast revoke"), countdown=ETA_COUNTDOWN),
            self.send(Job("a-control", "a", "run"), countdown=ETA_COUNTDOWN),
        ]
        long = self.send(Job("a-long", "a", "terminated", "broadcast revoke, terminate=True"), LONG_TASK_SECONDS)
        wait_for(lambda: self.held_by_a(eta_jobs), 15, "worker A to hold the ETA tasks")
        self.say.step(f"   queued a-revoked-1, a-revoked-2, a-control with a {ETA_COUNTDOWN:.0f} s countdown; "
                      "inspect().scheduled() shows them waiting in worker A's memory")
        started = wait_for(lambda: self.ran.started(long.tag), 15, "a-long to start")
        self.say.step(f"   a-long is running in pool process {started['pid']}")

        revoked = [j for j in eta_jobs if j.revoked]
        self.app.control.revoke([j.task_id for j in revoked])
        wait_for(lambda: self.a.flagged_revoked([j.task_id for j in revoked]),
                 10, "worker A to apply the revoke broadcast")
        rows = sum(self.store.is_revoked(j.task_id) for j in revoked)
        self.say.step(f"   app.control.revoke(a-revoked-1, a-revoked-2): {rows} rows written to the table, "
                      "broadcast applied by worker A in memory")
        self.terminate_running(long, started["pid"])

    def terminate_running(self, job: Job, pid: int) -> None:
        self.app.control.revoke(job.task_id, terminate=True)
        wait_for(lambda: not process_alive(pid), 10, f"a-long's pool process {pid} to be terminated")
        at_step = self.ran.progress(job.tag)
        time.sleep(0.5)
        if self.ran.progress(job.tag) != at_step or not self.a.alive():
            raise DemoError("a-long kept working after its pool process was terminated")
        job.evidence.append(f"process {pid} killed at step {at_step}")
        self.say.step(f"   app.control.revoke(a-long, terminate=True): pool process {pid} killed "
                      f"at step {at_step} of {LONG_TASK_SECONDS * 10:.0f}, worker A still up")

    # -- 3

    def sigkill_and_restart_a(self) -> None:
        held = [j for j in self.jobs.values() if j.queue == "a" and j.countdown]
        if any(time.time() > j.eta - 0.5 for j in held):
            raise DemoError("this machine is too slow: the ETA tasks came due before worker A could be killed")
        self.a.kill()
        self.say.step("3. SIGKILL worker A's process group (as the OOM killer would): "
                      "its in-memory revokes are gone")
        self.say.note("stock Celery, even with --statedb, saves revokes only at a clean shutdown, "
                      "so it would run the revoked ETA tasks once they come back")
        count = self.redeliver([j.task_id for j in held], "a")
        self.say.note(f"the filesystem broker has no acks and forgets what a dead worker held; "
                      f"Redis, RabbitMQ or SQS would redeliver it, so the demo puts those {count} "
                      "messages back in queue a")
        self.start(self.a)

    def redeliver(self, task_ids: list[str], queue: str) -> int:
        """Play the broker: copy the consumed messages of ``task_ids`` back into the queue."""
        processed = self.workdir / "broker" / "processed"
        data = self.workdir / "broker" / "data"
        wanted, count = set(task_ids), 0
        for path in sorted(processed.glob(f"*.{queue}.msg")):
            try:
                message = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if message.get("headers", {}).get("id") in wanted:
                # move, not copy: the transport moves each message it takes
                # into ``processed`` and skips it if a same-named file is there
                shutil.move(path, data / path.name)
                count += 1
        if count != len(wanted):
            raise DemoError(f"found {count} of the {len(wanted)} messages worker A held")
        return count

    # -- 4

    def offline_worker_b(self) -> None:
        self.say.step("4. worker B is offline; queue b-revoked and b-control for it")
        target = self.send(Job("b-revoked", "b", "not run", "table only, B offline"))
        self.send(Job("b-control", "b", "run"))
        self.store.add([target.task_id], reason="revoked while worker B was offline")
        self.say.step("   revoke b-revoked in the table only, as `revstore revoke <id>` does "
                      "(no broadcast could reach an offline worker)")
        self.say.step("   start worker B")
        self.start(self.b)

    # -- 5

    def wait_for_outcome(self) -> None:
        """Wait until the controls ran and the workers discarded the revoked tasks."""
        due = max(j.eta for j in self.jobs.values())
        self.say.step(f"5. wait for the ETA ({max(0.0, due - time.time()):.0f} s) and the controls to run")
        workers = {"a": self.a, "b": self.b}

        def settled() -> bool:
            controls = all(self.ran.finished(j.tag) for j in self.jobs.values() if j.expect == "run")
            discarded = all(workers[j.queue].logged(f"Discarding revoked task: revstore_demo.work[{j.task_id}]")
                            for j in self.jobs.values() if j.expect == "not run")
            return controls and discarded

        try:
            wait_for(settled, max(0.0, due - time.time()) + 10, "the controls to run")
        except DemoError as exc:
            self.say.note(f"{exc}; judging on what happened")
        time.sleep(0.5)  # anything revoked but due with the controls would have started by now
        for job in self.jobs.values():
            worker = workers[job.queue]
            if worker.logged(f"Discarding revoked task: revstore_demo.work[{job.task_id}]"):
                job.evidence.append(f"discarded by worker {worker.label} (run {worker.runs}) on receipt")

    def stop_workers(self) -> None:
        stop_all([self.a, self.b])
        self.say.step("   all workers stopped")

    # -- verdict

    def outcome(self, job: Job) -> tuple[str, bool]:
        """What happened to ``job`` according to ``ran/``, and whether that was expected."""
        started = self.ran.started(job.tag)
        finished = self.ran.finished(job.tag)
        if started is None:
            text = "did not run"
        elif finished:
            text = f"ran on {started['worker'].split('@')[0]}"
        else:
            text = "started, never finished"
        ok = {"run": finished, "not run": started is None, "terminated": started is not None and not finished}
        return text, ok[job.expect]

    def report(self) -> bool:
        rows = [("task", "queue", "revoked how", "expected", "outcome", "")]
        all_ok = True
        for job in self.jobs.values():
            text, ok = self.outcome(job)
            all_ok &= ok and (job.expect != "terminated" or bool(job.evidence))
            detail = f"{text} ({'; '.join(job.evidence)})" if job.evidence else text
            rows.append((job.tag, job.queue, job.how, job.expect, detail, "ok" if ok else "WRONG"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        print()
        for i, row in enumerate(rows):
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                print("  " + "  ".join("-" * w for w in widths))
        print()
        return all_ok

    def run(self) -> int:
        try:
            self.create_schema()
            self.worker_a_holds_and_revokes()
            self.sigkill_and_restart_a()
            self.offline_worker_b()
            self.wait_for_outcome()
            self.stop_workers()
        finally:
            stop_all([self.a, self.b])
            self.store.dispose()
        if self.report():
            print(f"PASS: every revoked task stayed revoked, every control task ran "
                  f"({self.say.elapsed():.1f} s)")
            return 0
        print("FAIL: a revoked task ran or a control task did not; worker logs are in "
              f"{self.workdir / 'logs'}")
        return 1


def run_demo(workdir: str | None) -> int:
    """Run the demo in ``workdir`` (default: a new temp folder); return the exit code."""
    try:
        path = prepare_workdir(workdir)
    except DemoError as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"revstore demo in {path}: SQLite table, filesystem broker, file result backend; no server")
    with scrubbed_environment(), sigterm_as_interrupt():
        try:
            return Demo(path).run()
        except DemoError as exc:
            print(f"FAIL: {exc} (worker logs: {path / 'logs'})")
            return 1
        except KeyboardInterrupt:
            print("interrupted; every worker was stopped")
            return 130
