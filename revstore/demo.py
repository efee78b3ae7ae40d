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

The worker processes are :mod:`revstore.demo_workers`, the folder, the
environment and the tasks' evidence :mod:`revstore.demo_setup`; this module
tells the story.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from .demo_setup import Job, Ran, prepare_workdir, scrubbed_environment, sigterm_as_interrupt, worker_env
from .demo_workers import DemoError, Worker, process_alive, stop_all, wait_for

#: Seconds the ETA tasks wait: long enough to revoke them and SIGKILL worker A
#: before they are due, short enough to keep the demo well under a minute.
ETA_COUNTDOWN = 8.0
#: How long the running task would work if nobody terminated it.
LONG_TASK_SECONDS = 30.0


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
