"""Issue 21 item 4: a randomized checker of the whole promise, in the style of Jepsen.

Real ``celery worker`` processes in random pools (some through PgBouncer in
transaction mode) are driven at once by random writers (the client API, the
patched ``app.control.revoke``, a stock broadcast that bypasses revstore,
table-only CLI writes, restores, revocations that expire) and random task
sends (some with a countdown), while faults hit them at random moments.
Each task records its own execution outside revstore; afterwards
tests/checker.py judges the recorded history (the rules are in its
docstring).

Environment:

* ``CHECKER_SEED``: the seed (a new one each run otherwise, printed first).
  The seed fixes every random choice; thread timing still varies, so a
  failing seed reproduces the same schedule, not the same interleaving.
* ``CHECKER_SECONDS``: how long operations and faults run (default 60: the CI run).
* ``CHECKER_FAULTS``: comma-separated kinds from ``checker.FAULT_KINDS``, or
  ``all``; default ``checker.DEFAULT_FAULTS``, what current code passes.
* ``CHECKER_HISTORY_DIR``: where a failing run's history goes (default ``.cache/checker``).

``make soak SECONDS=1800`` runs it for half an hour.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

import revstore
from checker import FAULT_KINDS, Fault, History, Judge, Op, Run, Send, first, parse_faults
from harness import (
    BROKER_URL, PG_BASE, PG_HOST, PG_PORT, PGBOUNCER_PORT, VISIBILITY, Cluster, Worker, await_redelivery, revoked_on, revstore as revstore_cli, wait_for,
)
from proxy import TcpProxy
from revstore import migrate

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("CHECKER_SECONDS", "60"))
FAULTS = parse_faults(os.environ.get("CHECKER_FAULTS"))
HISTORY_DIR = Path(os.environ.get("CHECKER_HISTORY_DIR", ROOT / ".cache" / "checker"))
POOLS = ("prefork", "threads", "solo", "gevent")
#: Short intervals keep the settle allowance (and so the run) short.
SYNC_INTERVAL = 1.0
CLEANUP_INTERVAL = 2.0
#: What a revoke through any path gets to reach every worker: a poll, its pull and
#: the drain, with room for a loaded 2-core machine.
SETTLE = SYNC_INTERVAL + 4.0
#: A worker restarted within this of its last snapshot write starts from the
#: snapshot (the usual restart, ``kill``); ``kill_early`` waits longer, so the
#: restart loads the table in full and its snapshot base is written only later.
SNAPSHOT_MAX_AGE = 15.0
#: A worker's first seconds after a full load: revstore once wrote the snapshot's
#: base 5 s after it, and revocations it pulled until then were lost at its next
#: restart after SIGKILL (issue 21).  Only ``kill_early`` kills a worker then, and
#: without it no operation runs in the workers' first seconds either, so that
#: ``kill`` alone leaves that window to ``kill_early``.
FIRST_SECONDS = 7.0
#: At most this many restored ids are probed on every worker at the end.
PROBES = 12


class Driver:
    """Runs writers, a sender and a fault injector against the cluster and records the history."""

    def __init__(self, cluster: Cluster, celery_app: Any, admin: Engine, history: History, seed: int,
                 proxies: list[TcpProxy]) -> None:
        self.cluster, self.tasks, self.admin, self.h, self.seed = cluster, celery_app, admin, history, seed
        self.proxies = proxies
        self.schema = cluster.store.tables.schema  # type: ignore[attr-defined]
        self.workers: list[Worker] = []
        self.stop = threading.Event()
        #: failures of the driver itself (not findings): they fail the test outright
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.ids: list[str] = []
        self._counter = 0
        self.writer = Celery("checker-writer", broker=BROKER_URL, set_as_current=False)
        self.writer.conf.revstore_url, self.writer.conf.revstore_schema = PG_BASE, self.schema
        revstore.install(self.writer)  # its app.control.revoke writes the table first
        self.cli_env = {"REVSTORE_URL": PG_BASE, "REVSTORE_SCHEMA": self.schema}

    # ---------------------------------------------------------------- helpers

    def rng(self, role: str) -> random.Random:
        return random.Random(f"{self.seed}/{role}")

    def pick_id(self, rng: random.Random, fresh: float) -> str:
        """An id used before, or (with probability ``fresh``) a new one."""
        with self._lock:
            if not self.ids or rng.random() < fresh:
                self._counter += 1
                self.ids.append(f"{self.cluster.run_id}-{self._counter}")
                return self.ids[-1]
            return rng.choice(self.ids)

    def next_seq(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def start(self, *workers: Worker) -> float:
        """Start the workers at once (each start costs seconds); the time the last was ready."""
        for worker in workers:
            self.h.launched(worker.name, time.time())
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready(90)
            self.h.ready(worker.name, time.time())
        return time.time()

    def kill(self, worker: Worker) -> tuple[float, float]:
        """SIGKILL: the wall time for the history, the monotonic time for await_redelivery."""
        at, mono = time.time(), time.monotonic()
        worker.kill()
        self.h.killed(worker.name, at, time.time())
        return at, mono

    def up_since(self, worker: Worker) -> float:
        lives = [life.ready for life in self.h.lives if life.worker == worker.name and life.down is None]
        return time.time() - lives[-1] if lives and lives[-1] is not None else 0.0

    def cli(self, *args: str) -> None:
        result = revstore_cli(*args, env=self.cli_env, timeout=60)
        if result.code != 0:
            raise RuntimeError(result.err.strip().splitlines()[-1] if result.err.strip() else f"exit {result.code}")

    def run_threads(self, seconds: float) -> None:
        threads = [threading.Thread(target=self.guard(self.writes, f"writer{n}"), daemon=True) for n in range(2)]
        threads += [threading.Thread(target=self.guard(self.sends, "sender"), daemon=True),
                    threading.Thread(target=self.guard(self.faults, "faults"), daemon=True)]
        for t in threads:
            t.start()
        self.stop.wait(seconds)
        self.stop.set()
        for t in threads:
            t.join(120)
        assert not [t for t in threads if t.is_alive()], "a driver thread did not stop"
        assert not self.errors, self.errors

    def guard(self, fn: Callable[[random.Random], None], role: str) -> Callable[[], None]:
        """Run one driver thread; an exception in the driver itself fails the test (not the verdict)."""
        def run() -> None:
            try:
                fn(self.rng(role))
            except Exception as exc:
                self.errors.append(f"{role}: {type(exc).__name__}: {exc}")
                self.stop.set()
        return run

    # ---------------------------------------------------------------- writers

    def writes(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(0.1, 0.5)):
            task_id = self.pick_id(rng, fresh=0.3)
            if rng.random() < 0.2:
                path = rng.choices(["api", "cli"], weights=[3, 2])[0]
                self.record("restore", path, task_id, None, lambda: (
                    revstore.restore(self.writer, task_id) if path == "api" else self.cli("restore", task_id)))
                continue
            path = rng.choices(["api", "patched", "stock", "cli"], weights=[3, 2, 3, 1.5])[0]
            expires = rng.randint(3, 8) if path in ("api", "cli") and rng.random() < 0.3 else None
            actions: dict[str, Callable[[], Any]] = {
                "api": lambda: revstore.revoke(self.writer, task_id, expires=expires),
                "patched": lambda: self.writer.control.revoke(task_id),
                # Celery's own broadcast, revstore's client patch bypassed: workers write it through
                "stock": lambda: self.writer.control.broadcast("revoke", arguments={"task_id": [task_id]}),
                "cli": lambda: self.cli("revoke", task_id, *(["--expires", str(expires)] if expires else [])),
            }
            self.record("revoke", path, task_id, expires, actions[path])

    def record(self, kind: str, path: str, task_id: str, expires: float | None, action: Callable[[], Any]) -> None:
        start = time.time()
        try:
            result = action()
        except Exception as exc:  # a write during a fault may fail: recorded, never counted as done
            error = f"{type(exc).__name__}: {exc}"[:300]
            self.h.add(Op(kind, path, task_id, start, time.time(), False, expires, error))
        else:
            # the client API reports a failed broadcast instead of raising: then the table is the only path
            broadcast = kind == "revoke" and path != "cli" and getattr(result, "broadcast", True)
            self.h.add(Op(kind, path, task_id, start, time.time(), True, expires, broadcast=broadcast))

    # ------------------------------------------------------------------ sends

    def sends(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(0.05, 0.25)):
            self.send(self.pick_id(rng, fresh=0.2), rng.choice(self.workers),
                      rng.uniform(1, 6) if rng.random() < 0.25 else 0.0)

    def send(self, task_id: str, worker: Worker, countdown: float, probe: bool = False) -> None:
        seq, start = self.next_seq(), time.time()
        self.tasks.logged.apply_async((seq,), task_id=task_id, queue=worker.queue, countdown=countdown or None)
        self.h.add(Send(task_id, seq, worker.name, start, time.time(), countdown, probe))

    # ----------------------------------------------------------------- faults

    def faults(self, rng: random.Random) -> None:
        kinds = [k for k in FAULTS if k != "pgbouncer"]
        gap = 0.0
        while kinds and not self.stop.wait(gap + rng.uniform(2, 6)):
            kind = rng.choice(kinds)
            getattr(self, f"fault_{kind}")(rng)
            # what a rewind or a re-created database took is not judged: leave time for what comes after
            gap = rng.uniform(8, 15) if kind in ("rewind", "recreate") else 0.0

    def fault_kill(self, rng: random.Random) -> None:
        """SIGKILL a worker past its first seconds (those are ``kill_early``'s), restart it once
        its unacknowledged messages can come back."""
        settled = [w for w in self.workers if self.up_since(w) > FIRST_SECONDS + 3]
        if settled:
            worker = rng.choice(settled)
            at, mono = self.kill(worker)
            await_redelivery(mono)
            self.h.add(Fault("kill", at, self.start(worker), worker.name))

    def fault_kill_early(self, rng: random.Random) -> None:
        """SIGKILL a worker, restart it from a full load (its snapshot has gone stale), SIGKILL it again
        within its first seconds (before, while or after its snapshot base is written), restart it."""
        worker = rng.choice(self.workers)
        at, _ = self.kill(worker)
        time.sleep(max(VISIBILITY + 1.0, SNAPSHOT_MAX_AGE + 1.0))  # time is the subject: the snapshot goes stale
        self.h.add(Fault("kill_early", at, self.start(worker), worker.name))
        time.sleep(rng.uniform(0, FIRST_SECONDS))  # time is the subject: a random moment of its first seconds
        at, mono = self.kill(worker)
        await_redelivery(mono)
        self.h.add(Fault("kill_early", at, self.start(worker), worker.name))

    def fault_db_restart(self, rng: random.Random) -> None:
        """The database goes away (every worker connection cut, new ones refused) and comes back."""
        start = time.time()
        for proxy in self.proxies:
            proxy.down()
        time.sleep(rng.uniform(1, 5))  # time is the subject: how long the outage lasts
        for proxy in self.proxies:
            proxy.up()
        self.h.add(Fault("db_restart", start, time.time()))

    def fault_cut(self, rng: random.Random) -> None:
        """Every worker connection dropped at once; reconnecting works at once."""
        start = time.time()
        for proxy in self.proxies:
            proxy.cut()
        self.h.add(Fault("cut", start, time.time()))

    def table(self, name: str) -> str:
        return f'"{self.schema}".revstore_{name}'

    def backup(self, name: str) -> str:
        return f'"{self.schema}".checker_backup_{name}'

    def fault_rewind(self, rng: random.Random) -> None:
        """The database is restored from a backup: copy the tables, let work go on, put the copy back
        while the workers are cut off (a restore restarts the server)."""
        start = time.time()
        with self.admin.connect() as conn:
            conn.execute(text("BEGIN"))
            conn.execute(text(f"LOCK TABLE {self.table('clock')} IN EXCLUSIVE MODE"))  # a consistent pair
            for name in ("revocations", "clock"):
                conn.execute(text(f"CREATE TABLE {self.backup(name)} AS SELECT * FROM {self.table(name)}"))
            conn.execute(text("COMMIT"))
        time.sleep(rng.uniform(3, 8))  # time is the subject: writes land after the copy, then are lost
        for proxy in self.proxies:
            proxy.down()
        with self.admin.connect() as conn:
            conn.execute(text("BEGIN"))
            conn.execute(text(f"LOCK TABLE {self.table('clock')}, {self.table('revocations')} IN ACCESS EXCLUSIVE MODE"))
            for name in ("revocations", "clock"):
                conn.execute(text(f"DELETE FROM {self.table(name)}"))
                conn.execute(text(f"INSERT INTO {self.table(name)} SELECT * FROM {self.backup(name)}"))
                conn.execute(text(f"DROP TABLE {self.backup(name)}"))
            conn.execute(text("COMMIT"))
        rebuilt = time.time()
        time.sleep(rng.uniform(0.5, 2))  # time is the subject: how long the outage lasts
        for proxy in self.proxies:
            proxy.up()
        self.h.add(Fault("rewind", start, time.time(), rebuilt=rebuilt))

    def fault_recreate(self, rng: random.Random) -> None:
        """The database is re-created empty at the same URL: schema dropped, ``db upgrade`` again."""
        start = time.time()
        for proxy in self.proxies:
            proxy.down()
        for attempt in range(5):  # a client writing directly (not through the proxy) may deadlock with it
            try:
                with self.admin.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
                break
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == 4:
                    raise
        migrate.upgrade(self.cluster.store)  # type: ignore[attr-defined]  # what `revstore db upgrade` runs
        rebuilt = time.time()
        time.sleep(rng.uniform(0.5, 2))  # time is the subject: how long the outage lasts
        for proxy in self.proxies:
            proxy.up()
        self.h.add(Fault("recreate", start, time.time(), rebuilt=rebuilt))

    # ------------------------------------------------------------------ after

    def live_in_table(self) -> set[str]:
        """Task ids the table holds revoked, leaving out rows about to expire."""
        with self.admin.connect() as conn:
            rows = conn.execute(text(
                f"SELECT value FROM {self.table('revocations')} WHERE kind = 'task' AND active "
                "AND (expires_at IS NULL OR expires_at > now() + make_interval(secs => :margin))"),
                {"margin": SETTLE + 5}).scalars()
            return set(rows)

    def check_memory(self, timeout: float) -> None:
        """Wait (the settle allowance) until every worker holds the table; record what is still missing."""
        deadline = time.monotonic() + timeout
        while True:
            table = self.live_in_table()
            missing = {w.name: sorted(table - revoked_on(self.writer, w, timeout=5)) for w in self.workers}
            if not any(missing.values()) or time.monotonic() > deadline:
                self.h.memory_missing = {k: v for k, v in missing.items() if v}
                return
            time.sleep(1)  # poll interval: on timeout it records what is missing for the judge, not fail here

    def await_runs(self, judge: Judge, timeout: float) -> None:
        """Give every send that must run the time to run (countdowns, a restart's redelivery)."""
        runs = self.cluster.out / "runs.jsonl"
        eta_ids = {s.id for s in self.h.sends if s.countdown}
        due = [s for s in self.h.sends if judge.must_run(s, eta_ids)]

        def all_ran() -> bool:
            self.h.read_runs(runs)
            ran = {(r.id, r.seq) for r in self.h.runs}
            return all((s.id, s.seq) in ran for s in due)

        try:
            wait_for(all_ran, timeout, interval=0.5)
        except AssertionError:
            pass  # the judge names what never ran


@pytest.fixture
def proxies() -> Any:
    """A TCP proxy in front of PostgreSQL and one in front of PgBouncer: the workers' only way in."""
    made = [TcpProxy((PG_HOST, PG_PORT)), TcpProxy((PG_HOST, PGBOUNCER_PORT))]
    yield made
    for proxy in made:
        proxy.close()


def pgbouncer_url() -> str:
    return PG_BASE.replace(f"{PG_HOST}:{PG_PORT}", f"{PG_HOST}:{PGBOUNCER_PORT}")


@pytest.mark.flaky(reruns=0)  # a finding must not be hidden by CI's reruns with another seed
@pytest.mark.timeout(SECONDS + 400)
def test_random_operations_and_faults_keep_the_promise(cluster_factory, celery_app, pg_admin_engine, proxies) -> None:
    seed = int(os.environ.get("CHECKER_SEED") or secrets.randbelow(2**31))
    print(f"checker: CHECKER_SEED={seed} CHECKER_FAULTS={','.join(FAULTS)} CHECKER_SECONDS={SECONDS:g}", flush=True)
    rng = random.Random(seed)
    history = History(seed, FAULTS, SETTLE, CLEANUP_INTERVAL)
    cluster = cluster_factory("postgresql", revstore_sync_interval=SYNC_INTERVAL,
                              revstore_cleanup_interval=CLEANUP_INTERVAL)
    driver = Driver(cluster, celery_app, pg_admin_engine, history, seed, proxies)

    pools = rng.sample(POOLS, len(POOLS))
    pooled = [("pgbouncer" in FAULTS) and rng.random() < 0.5 for _ in pools]
    if "pgbouncer" in FAULTS and not any(pooled):
        pooled[rng.randrange(len(pooled))] = True
    for n, (pool, via_pgbouncer) in enumerate(zip(pools, pooled)):
        url = proxies[1].url(pgbouncer_url()) if via_pgbouncer else proxies[0].url(PG_BASE)
        driver.workers.append(cluster.worker(f"w{n}-{pool}{'-pgb' if via_pgbouncer else ''}", pool=pool,
                                             REVSTORE_URL=url, REVSTORE_SNAPSHOT_MAX_AGE=str(SNAPSHOT_MAX_AGE)))
    print("checker: workers " + ", ".join(w.name for w in driver.workers), flush=True)
    driver.start(*driver.workers)
    if "kill_early" not in FAULTS:
        time.sleep(FIRST_SECONDS)  # the workers' first seconds are kill_early's

    started = time.monotonic()
    driver.run_threads(SECONDS)
    time.sleep(SETTLE)  # time is the subject: the settle allowance the judge grants every fault
    driver.check_memory(timeout=3 * SETTLE)
    judge = Judge(history)
    probe_rng = driver.rng("probes")
    restored = judge.restored_ids()
    for task_id in probe_rng.sample(restored, min(PROBES, len(restored))):
        for w in driver.workers:
            driver.send(task_id, w, 0.0, probe=True)
    driver.await_runs(judge, timeout=30)
    history.end = time.time()
    history.read_runs(cluster.out / "runs.jsonl")

    judge = Judge(history)
    found = judge.violations()
    exercised = judge.exercised()
    print(f"checker: seed {seed}, {time.monotonic() - started:.0f}s: {history.counts()} {exercised}", flush=True)
    # a run that met no revoked send, or ran nothing, proves nothing
    if not exercised["sends_certainly_revoked"] or not exercised["sends_that_must_run"]:
        found.append(f"NOTHING PROVED: {exercised}")
    if found:
        path = history.dump(HISTORY_DIR / f"history-{seed}.json")
        logs = HISTORY_DIR / f"history-{seed}-logs"  # pytest's temporary folders are soon removed
        logs.mkdir(exist_ok=True)
        for log in cluster.tmp.glob("*.log"):
            shutil.copy(log, logs)
        pytest.fail(f"CHECKER_SEED={seed} CHECKER_FAULTS={','.join(FAULTS)}: {len(found)} violations "
                    f"(history: {path}; worker logs: {logs})\n{first(found, 30)}\n"
                    f"{explain(judge, found[:3], cluster.tmp)}", pytrace=False)


def explain(judge: Judge, found: list[str], logs: Path) -> str:
    """The history and the worker log lines of the first violations' ids: CI keeps only its output."""
    parts = []
    for line in found:
        task_id = next((word for word in line.split() if judge.by_id.get(word) is not None
                        or any(s.id == word for s in judge.h.sends)), None)
        if task_id is None:
            continue
        logged = [f"  {log.stem}: {text.strip()[:300]}" for log in sorted(logs.glob("*.log"))
                  for text in log.read_text(errors="replace").splitlines() if task_id in text]
        parts.append("\n".join([f"{task_id}:", *judge.explain(task_id), *logged[-40:]]))
    return "\n".join(parts)


def test_fault_kinds_are_known() -> None:
    """``CHECKER_FAULTS`` names are checked up front: a typo must not silently run fewer faults."""
    assert set(parse_faults("all")) == set(FAULT_KINDS)
    with pytest.raises(ValueError):
        parse_faults("kill,rewnd")



def test_the_judge_flags_what_breaks_the_promise_and_spares_what_stock_allows() -> None:
    """The rules on a hand-written history: each flagged case next to the race that is not."""
    h = History(seed=0, faults_enabled=(), settle=4.0, cleanup_interval=2.0)
    for worker in ("a", "b"):
        h.launched(worker, 0.0)
        h.ready(worker, 2.0)
    h.add(Op("revoke", "cli", "settled", 10.0, 11.0, True))  # table only: a poll to reach a worker
    h.add(Op("revoke", "api", "restored", 10.0, 10.1, True, broadcast=True))
    h.add(Op("restore", "api", "restored", 20.0, 20.1, True))
    h.add(Op("revoke", "api", "expiring", 10.0, 10.1, True, expires=8.0, broadcast=True))
    h.add(Op("revoke", "api", "after-kill", 30.0, 30.1, True, broadcast=True))
    h.killed("b", 29.0)
    h.launched("b", 40.0)  # launched after the commit: must know it before its first task
    h.ready("b", 42.0)
    h.add(Fault("kill", 29.0, 42.0, "b"))
    for seq, (task_id, worker, at) in enumerate([
        ("settled", "a", 14.0),      # before the poll allowance: may run
        ("settled", "a", 16.0),      # VIOLATION
        ("restored", "a", 15.0),     # revoked and heard: VIOLATION
        ("restored", "a", 21.0),     # a restore had begun: may run
        ("expiring", "a", 16.0),     # alive until 18 (less the clock margin): VIOLATION
        ("expiring", "a", 18.5),     # expired: may run
        ("after-kill", "b", 42.5),   # VIOLATION: loaded at start
    ]):
        h.sends.append(Send(task_id, seq, worker, at - 0.5, at - 0.5))
        h.runs.append(Run(task_id, seq, worker, at))
    h.add(Send("restored", 100, "b", 31.0, 31.0))  # restored and settled: must run, never did
    h.add(Send("fresh", 101, "b", 45.0, 45.0))  # never revoked: must run, did
    h.runs.append(Run("fresh", 101, "b", 45.1))
    h.add(Send("fresh", 102, "a", 45.0, 45.0))
    h.killed("a", 46.0)  # killed after the send: its message may be lost, not judged
    h.launched("a", 50.0)
    h.ready("a", 52.0)
    h.add(Send("fresh", 103, "a", 60.5, 60.5))  # a blink after the kill was reaped: may go to the dead consumer
    h.add(Send("fresh", 104, "a", 61.5, 61.5))  # after it: must run, never did
    h.killed("a", 60.0, 60.1)
    h.memory_missing = {"a": ["settled"]}

    found = Judge(h).violations()
    ran = sorted(line.split()[3:6:2] for line in found if line.startswith("REVOKED TASK RAN"))
    assert ran == [["after-kill", "6"], ["expiring", "4"], ["restored", "2"], ["settled", "1"]], found
    assert [line for line in found if "NEVER RAN" in line] == [
        "NOT REVOKED BUT NEVER RAN: send restored seq 100 to b at 31.000 (countdown 0.0s)",
        "NOT REVOKED BUT NEVER RAN: send fresh seq 104 to a at 61.500 (countdown 0.0s)"], found
    assert sum("MEMORY LACKS THE TABLE: a misses 1" in line for line in found) == 1
    report = explain(Judge(h), [line for line in found if "NEVER RAN" in line], Path("/nonexistent"))
    assert report.splitlines()[:4] == ["restored:", "  revoke api 10.000-10.100 ok=True expires=None broadcast=True",
                                       "  restore api 20.000-20.100 ok=True expires=None broadcast=False",
                                       "  send seq 2 to a 14.500 countdown 0.0"], report
