"""Fleet: hundreds of workers' syncs on one PostgreSQL, directly and through PgBouncer.

N simulated workers (``bench.fleetsim``: revstore's real ``RevocationSync``
and store, each with its own connection and its own broker connection and
consumer, in processes of ``PER_PROCESS``) run against PostgreSQL directly and through a PgBouncer in
transaction mode that this benchmark starts itself (``bench.pgbouncer``).
For each N it measures the PostgreSQL server connections they hold, the
database errors they log, how fast a table-only revocation reaches all of
them by polling and by a broker wake-up (``revstore_sync`` on the control
exchange's fanout), PostgreSQL's CPU idle and at 10 revokes/s, and a fleet
restart loading 100,000 stored revocations each.

PostgreSQL's ``max_connections`` (100) is shared with whatever else runs on
this machine: the direct runs are short, and start at most as many workers
as leave ``HEADROOM`` connections free; the rest count as refused, which is
what PostgreSQL would do past its limit.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import create_engine, text

from bench.common import BROKER, PG_URL, Figure, cpu_seconds, fresh_store, log, main, median, percentile, seed
from bench.fleetsim import PROBE_PREFIX, WAKE_PREFIX, Spec, serve
from bench.pgbouncer import PgBouncer
from revstore.config import DEFAULT_SYNC_INTERVAL

NAME = "fleet"
TITLE = "Fleet: N workers' syncs, PostgreSQL direct and through PgBouncer"
SIZES = (100, 500)
QUICK_SIZES = (10,)
#: simulated workers per process: 20 processes at N=500, so a fanout wakes 20 interpreters, not 10
PER_PROCESS = 25
POOL_SIZE = 20
HEADROOM = 20
POLL = DEFAULT_SYNC_INTERVAL
RESTART_STORED = 100_000
#: ids loaded by a whole fleet restart, at most: the simulated workers share 2 cores
RESTART_IDS = 10_000_000
TARGET_SERVER_CONNS = 20
TARGET_BROKER_P99 = 1.0
#: the longest a broker wake-up probe waits for the previous one to reach every worker
BROKER_SETTLE = 15.0
TARGET_POLL_P99 = POLL + 1.0
APP_PREFIX = "revstore-fleet"


BOUNDS = """\
- **Fleet: server connections.** Direct, each worker holds its own
  connection for its sync (more while it writes), so N workers need N
  connections and PostgreSQL refuses them past `max_connections` (100 here,
  shared with the rest of the machine: the benchmark leaves 20 to others and
  counts the rest as refused).  Through PgBouncer in transaction mode a
  worker holds a server connection only for the length of a transaction:
  the pool size (20) bounds it whatever N is, 10,000 workers included;
  PgBouncer itself holds one socket per worker.
- **Fleet: errors.** Through a transaction pooler, psycopg's server-side
  prepared statements break (`DuplicatePreparedStatement`): they are off
  (`prepare_threshold=None`).  A client that waits longer than PgBouncer's
  `query_wait_timeout` (120 s) for a server connection gets an error and
  retries: a restart of thousands of workers each loading a large table
  through a small pool can reach it (see the restart figure).
- **Fleet: propagation by polling.** A table-only revoke waits for each
  worker's next poll: uniform over the poll interval, plus the pull.  The
  pull's time is PostgreSQL's part (an index probe, a fraction of a ms)
  plus the worker's own Python (some 2 ms of CPU); here hundreds of
  simulated workers share 2 cores with the rest of the machine, so pulls
  queue for CPU and the tail exceeds the interval by that queue, which real
  workers, each on its own CPU, do not have.  At 10,000 workers the latency
  is the same if PostgreSQL keeps up with N / interval polls per second (the
  idle CPU figure gives its cost); a longer interval trades latency for it.
- **Fleet: propagation by broker wake-up.** Redis delivers the
  `revstore_sync` broadcast to every worker's pidbox consumer, each on its
  own broker connection as real workers are (the "of which delivery" rows:
  commit to the worker's handler), then all N pull at once: through 20
  pooled connections, and here on the simulation's 2 shared cores, where
  the N pulls (some 2 ms of Python each, plus PostgreSQL's part) run beside
  the handlers still being reached, so delivery and pulls slow each other;
  real workers each pull on their own CPU.  "Delivery alone" is the same
  fanout with handlers that pull nothing: the broker's own reach, and
  "database CPU per broker wake-up" the database's part of the N pulls:
  with both, what a fleet whose workers each have a CPU would see.  "CPU
  per broker wake-up, all of it" adds the simulated workers' own CPU (each
  one's handler and pull) to the database's and PgBouncer's: half of it is
  the least time these 2 cores need before the last worker holds a probe,
  the floor under the p99 on this machine.  Each
  probe is sent once the previous one reached every worker, so no probe
  waits behind another's burst.  At 10,000 workers the fanout itself is
  still one publish, and the burst of 10,000 pulls costs PostgreSQL 10,000
  times the CPU of one pull (the note gives it): a second or more, so a
  very large fleet wants the poll as its primary path and the broadcast for
  urgent revokes.
- **Fleet: PostgreSQL CPU.** Idle, each poll is a few statements (pool
  pre-ping, the clock row, the indexed `version > marker` probe), so the
  cost grows with N / poll interval; at 10 revokes/s each poll also returns
  the new rows, and each revoke is one short write transaction.  The
  figures count the CPU of the backends serving the fleet (from /proc), not
  PostgreSQL's background writers.
- **Fleet: restart.** Every worker loads the whole table at once: each
  load is one transaction that packs the ids server-side (PostgreSQL's CPU
  per load is in the note) and holds a pooled connection while the worker
  reads them, so loads queue for the pool's 20 connections, and here the
  simulated workers' parsing queues for 2 shared cores.  The restart loads
  at most 10,000,000 ids in all on this machine (500 workers × 20,000,
  100 × 100,000).  At 10,000 workers × 100,000 ids PostgreSQL packs a
  billion ids: the CPU-minutes in the note, spread over the pool, so a
  staggered restart (or a bigger pool for the restart) keeps it short.
"""


@dataclass
class Phases:
    idle_seconds: float = 20.0
    load_seconds: float = 20.0
    poll_probes: int = 8
    broker_probes: int = 10
    #: stored revocations each worker loads at the restart (0: no restart)
    restart_stored: int = RESTART_STORED

    @classmethod
    def quick(cls) -> Phases:
        return cls(3.0, 3.0, 2, 2, 1_000)

    @classmethod
    def for_size(cls, n: int) -> Phases:
        """A restart loads at most RESTART_IDS ids in all: 500 x 100,000 would take this 2-core machine many minutes."""
        return cls(restart_stored=min(RESTART_STORED, RESTART_IDS // n))


@dataclass
class Result:
    """One fleet run's figures."""

    mode: str
    n: int
    started: int = 0
    server_conns: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    poll: list[float] = field(default_factory=list)
    poll_all: list[float] = field(default_factory=list)
    broker: list[float] = field(default_factory=list)
    broker_all: list[float] = field(default_factory=list)
    #: commit to each worker's wake-up handler (the broadcast's delivery)
    delivered: list[float] = field(default_factory=list)
    #: send to each worker's wake-up handler of a broadcast that starts no pull: the broker alone
    delivery_only: list[float] = field(default_factory=list)
    cpu_idle: float = 0.0
    cpu_load: float = 0.0
    bouncer_cpu_load: float | None = None
    #: PostgreSQL CPU seconds of each broker wake-up's burst of N pulls (less idle polling), and PgBouncer's
    burst_cpu: list[float] = field(default_factory=list)
    bouncer_burst_cpu: list[float] = field(default_factory=list)
    #: the simulated workers' own CPU seconds per burst (less their idle rate), and that rate (CPU s per s)
    fleet_burst_cpu: list[float] = field(default_factory=list)
    fleet_cpu_idle: float = 0.0
    restart_stored: int = 0
    restart_seconds: float | None = None
    restart_conns: int = 0
    #: PostgreSQL CPU seconds the whole restart cost
    restart_cpu: float = 0.0


class Sampler:
    """Samples our backends in ``pg_stat_activity`` (and their CPU from /proc) every 0.25 s."""

    def __init__(self, app_name: str, extra_pids: list[int]) -> None:
        self.engine = create_engine(PG_URL, pool_size=1, connect_args={"application_name": "revstore-fleet-monitor"})
        self.app_name = app_name
        self.extra = extra_pids
        #: pid -> CPU seconds used, as last read
        self.cpu: dict[int, float] = {}
        self.peak = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def cpu_seconds(pid: int) -> float | None:
        """Time on a CPU, to the nanosecond (``/proc/PID/stat`` rounds each process down to 10 ms,
        which loses all of a backend that runs 1 ms per poll)."""
        try:
            return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        with self.engine.connect() as conn:
            pids = [r[0] for r in conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :name"), {"name": self.app_name})]
        self.peak = max(self.peak, len(pids))
        for pid in pids + self.extra:
            used = self.cpu_seconds(pid)
            if used is not None:
                self.cpu[pid] = used

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._sample()
            except Exception as exc:  # a sample lost is not a run lost
                log(f"fleet: sample failed: {exc}")

    def reset_peak(self) -> None:
        self.peak = 0

    def cpu_since(self, before: dict[int, float], pids: list[int] | None = None) -> float:
        """CPU seconds our backends (or ``pids``) used since the ``cpu`` copy ``before``."""
        self._sample()
        chosen = [p for p in self.cpu if p not in self.extra] if pids is None else pids
        return sum(self.cpu[p] - before.get(p, 0.0) for p in chosen if p in self.cpu)

    def cpu_window(self, seconds: float) -> float:
        """CPU seconds per minute of our backends over the next ``seconds``."""
        before = dict(self.cpu)
        time.sleep(seconds)
        return self.cpu_since(before) * 60 / seconds

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.engine.dispose()


def free_connections() -> int:
    engine = create_engine(PG_URL)
    with engine.connect() as conn:
        limit = int(conn.execute(text("SHOW max_connections")).scalar_one())
        reserved = int(conn.execute(text("SHOW superuser_reserved_connections")).scalar_one())
        used = int(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))
                   .scalar_one())
    engine.dispose()
    return limit - reserved - used


class Fleet:
    """N simulated workers in processes of ``PER_PROCESS``."""

    def __init__(self, spec: Spec, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # no inherited engines or threads
        run = uuid.uuid4().hex[:6]
        names = [f"sim{i}-{run}@fleet" for i in range(n)]
        self.pipes = []
        self.procs = []
        for first in range(0, n, PER_PROCESS):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(child, spec, names[first:first + PER_PROCESS]), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def ask(self, command: str, timeout: float = 600) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send(command)
        replies = []
        for pipe, proc in zip(self.pipes, self.procs):
            if not pipe.poll(timeout):
                raise TimeoutError(f"fleet process {proc.pid} did not answer {command!r} in {timeout}s")
            replies.append(pipe.recv())
        return replies

    def cpu(self) -> float:
        """CPU seconds the simulated workers' processes (all their threads) have used so far."""
        return sum(cpu_seconds(proc.pid) for proc in self.procs if proc.pid is not None)

    def seen(self) -> dict[str, list[float]]:
        by_probe: dict[str, list[float]] = {}
        for reply in self.ask("collect"):
            for value, when in reply["seen"]:
                by_probe.setdefault(value, []).append(when)
        return by_probe

    def close(self) -> Counter[str]:
        errors: Counter[str] = Counter()
        try:
            for reply in self.ask("stop", timeout=60):
                errors.update(reply["errors"])
        finally:
            for proc in self.procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
        return errors


def probe(store: Any, written: dict[str, float], wake: Celery | None) -> None:
    """One table-only revocation (as ``revstore revoke ID`` writes it); with ``wake``, then a broadcast."""
    value = f"{PROBE_PREFIX}{uuid.uuid4().hex[:10]}"
    store.add([value])
    written[value] = time.time()
    if wake is not None:
        wake.control.broadcast("revstore_sync", arguments={"probe": value})


def gather(fleet: Fleet, collected: dict[str, list[float]]) -> None:
    """Add what the fleet saw since the last call (probes held, wake-ups handled) to ``collected``."""
    for value, times in fleet.seen().items():
        collected.setdefault(value, []).extend(times)


def wait_held(fleet: Fleet, value: str, n: int, timeout: float, collected: dict[str, list[float]]) -> None:
    """Until all ``n`` workers hold the probe ``value`` (or ``timeout``), gathering into ``collected``."""
    deadline = time.monotonic() + timeout
    while len(collected.get(value, [])) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        gather(fleet, collected)


def latencies(fleet: Fleet, written: dict[str, float], n: int, timeout: float,
              wakes: list[float] | None = None,
              collected: dict[str, list[float]] | None = None) -> tuple[list[float], list[float]]:
    """Seconds from commit to held: per (probe, worker), and per probe for all ``n`` workers.

    ``wakes`` receives the seconds from commit to each worker's wake-up
    handler; ``collected`` is what ``gather`` already took from the fleet.
    """
    deadline = time.monotonic() + timeout
    collected = {} if collected is None else collected
    while True:
        gather(fleet, collected)
        if all(len(collected.get(v, [])) >= n for v in written) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for value, times in list(collected.items()):
        if value.startswith(WAKE_PREFIX):
            if wakes is not None and value[len(WAKE_PREFIX):] in written:
                wakes.extend(t - written[value[len(WAKE_PREFIX):]] for t in times)
            del collected[value]
    per_worker = [t - written[v] for v, times in collected.items() if v in written for t in times]
    missing = sum(max(0, n - len(collected.get(v, []))) for v in written)
    if missing:
        log(f"fleet: {missing} (probe, worker) pairs never held within {timeout:.0f}s")
        per_worker += [float("inf")] * missing
    all_n = [max(t - written[v] for t in collected[v]) if len(collected.get(v, [])) >= n else float("inf")
             for v in written]
    return per_worker, all_n


def run_fleet(mode: str, n: int, phases: Phases, url: str, bouncer_pid: int | None) -> Result:
    result = Result(mode, n)
    exchange = f"revstore-fleet-{uuid.uuid4().hex[:8]}"
    app_name = f"{APP_PREFIX}-{mode}"
    wake = Celery("fleet-client", broker=BROKER, set_as_current=False)
    wake.conf.control_exchange = exchange
    with fresh_store() as store:
        count = n
        if mode == "direct":
            count = max(0, min(n, free_connections() - HEADROOM))
            if count < n:
                result.errors[f"no connection: past max_connections ({n - count} workers)"] += n - count
        schema = store.tables.schema
        assert schema is not None
        spec = Spec(url, schema, BROKER, exchange, app_name)
        sampler = Sampler(app_name, [bouncer_pid] if bouncer_pid else [])
        fleet = Fleet(spec, count) if count else None
        try:
            if fleet is None:
                return result
            started = time.monotonic()
            replies = fleet.ask("start")
            result.started = sum(r["started"] for r in replies)
            log(f"fleet {mode} N={n}: {result.started} started in {time.monotonic() - started:.1f}s")
            time.sleep(2)
            sampler.reset_peak()
            sims, began = fleet.cpu(), time.monotonic()
            result.cpu_idle = sampler.cpu_window(phases.idle_seconds)
            result.fleet_cpu_idle = (fleet.cpu() - sims) / (time.monotonic() - began)
            log(f"fleet {mode} N={n}: idle PostgreSQL CPU {result.cpu_idle:.2f} s/min, peak conns {sampler.peak}")

            written: dict[str, float] = {}
            for _ in range(phases.poll_probes):
                probe(store, written, None)
                time.sleep(random.uniform(0.5, 1.5) * POLL / 3)
            result.poll, result.poll_all = latencies(fleet, written, result.started, POLL * 2 + 20)
            log(f"fleet {mode} N={n}: polling p99 {percentile(result.poll, 99):.2f}s")

            # each wake-up waits until the last one reached every worker: all N pull at once, which on
            # this machine's 2 cores takes what a fleet's N machines would not, and probes sent into that
            # backlog would measure the simulation's queue
            written, collected = {}, {}
            for _ in range(phases.broker_probes):
                before, began, sims = dict(sampler.cpu), time.monotonic(), fleet.cpu()
                probe(store, written, wake)
                wait_held(fleet, list(written)[-1], result.started, BROKER_SETTLE, collected)
                idle = result.cpu_idle / 60 * (time.monotonic() - began)  # the polls that ran meanwhile
                result.burst_cpu.append(max(0.0, sampler.cpu_since(before) - idle))
                sims_idle = result.fleet_cpu_idle * (time.monotonic() - began)
                result.fleet_burst_cpu.append(max(0.0, fleet.cpu() - sims - sims_idle))
                if bouncer_pid:
                    result.bouncer_burst_cpu.append(sampler.cpu_since(before, [bouncer_pid]))
                time.sleep(random.uniform(0.7, 1.3))
            result.broker, result.broker_all = latencies(fleet, written, result.started, POLL * 2 + 20,
                                                         result.delivered, collected)
            log(f"fleet {mode} N={n}: broker wake-up p99 {percentile(result.broker, 99):.2f}s, "
                f"delivered p99 {percentile(result.delivered or [0.0], 99):.2f}s")

            result.delivery_only = delivery_alone(fleet, wake, phases.broker_probes, result.started)
            log(f"fleet {mode} N={n}: broker delivery alone p99 {percentile(result.delivery_only or [0.0], 99):.2f}s")

            writer = threading.Thread(target=_revoke_at, args=(store, 10.0, phases.load_seconds + 1), daemon=True)
            writer.start()
            time.sleep(0.5)
            before = dict(sampler.cpu)
            result.cpu_load = sampler.cpu_window(phases.load_seconds)
            if bouncer_pid:
                result.bouncer_cpu_load = sampler.cpu_since(before, [bouncer_pid]) * 60 / phases.load_seconds
            writer.join()
            fleet.seen()  # drop the load phase's (non-probe) bookkeeping
            result.server_conns = sampler.peak
            log(f"fleet {mode} N={n}: at 10 revokes/s PostgreSQL CPU {result.cpu_load:.2f} s/min")

            if mode == "pgbouncer" and phases.restart_stored:
                seed(store, phases.restart_stored)
                result.restart_stored = phases.restart_stored
                sampler.reset_peak()
                before = dict(sampler.cpu)
                started = time.time()
                replies = fleet.ask("restart")
                loaded = [t for r in replies for t in r["loaded_at"]]
                result.restart_seconds = (max(loaded) - started) if len(loaded) == count else float("inf")
                result.restart_conns = sampler.peak
                result.restart_cpu = sampler.cpu_since(before)
                log(f"fleet {mode} N={n}: restart with {phases.restart_stored:,} stored: all {len(loaded)} loaded "
                    f"in {result.restart_seconds:.1f}s, peak {result.restart_conns} server connections")
        finally:
            if fleet is not None:
                result.errors.update(fleet.close())
            sampler.close()
            wake.close()
    return result


def delivery_alone(fleet: Fleet, wake: Celery, probes: int, n: int) -> list[float]:
    """Seconds from send to each worker's wake-up handler, for broadcasts whose handlers start no pull.

    The same ``revstore_sync`` fanout through the same connections, with
    nothing else to do: what the broker takes to reach every worker when the
    simulation's 2 cores are not also running N pulls.
    """
    sent: dict[str, float] = {}
    collected: dict[str, list[float]] = {}
    for _ in range(probes):
        value = f"{PROBE_PREFIX}alone-{uuid.uuid4().hex[:10]}"
        sent[value] = time.time()
        wake.control.broadcast("revstore_sync", arguments={"probe": value, "pull": False})
        wait_held(fleet, WAKE_PREFIX + value, n, BROKER_SETTLE, collected)
        time.sleep(random.uniform(0.3, 0.6))
    return [t - sent[value] for value in sent for t in collected.get(WAKE_PREFIX + value, [])]


def _revoke_at(store: Any, rate: float, seconds: float) -> None:
    """Table-only revokes at ``rate`` per second (each its own transaction)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        store.add([f"fleet-load-{uuid.uuid4().hex[:12]}"])
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))


def errors_total(result: Result, refused: bool) -> int:
    return sum(v for k, v in result.errors.items() if k.startswith("no connection") == refused)


def per_poll_ms(r: Result) -> float:
    """PostgreSQL CPU per idle poll (ms): the idle CPU over the polls N workers make."""
    polls_per_s = r.started / POLL
    return r.cpu_idle / 60 / polls_per_s * 1000 if polls_per_s else 0.0


def figures_for(results: list[Result]) -> list[Figure]:
    """The table's rows; each note says what the figure means for 10,000 workers."""
    figures: list[Figure] = []
    biggest = max(r.n for r in results)
    for r in results:
        pooled = r.mode == "pgbouncer"
        judged = pooled and r.n == biggest and r.n >= 500
        where = f"{r.mode}, N={r.n}"
        refused = errors_total(r, True)
        errs = errors_total(r, False)
        kinds = "; ".join(f"{k} ×{v}" for k, v in r.errors.most_common(3) if not k.startswith("no connection"))
        conns_note = (f"{r.started} of {r.n} workers connected; {refused} refused (past max_connections, "
                      f"less {HEADROOM} left to others): 10,000 workers would need 10,000"
                      if refused else
                      f"{r.started} workers; PgBouncer's pool, not N, bounds it: the same {POOL_SIZE} at 10,000"
                      if pooled else f"{r.started} workers, one connection each: 10,000 would need 10,000")
        figures.append(Figure(NAME, f"{where}: PostgreSQL server connections (peak)", r.server_conns, "conns",
                              target=f"≤ {TARGET_SERVER_CONNS}" if judged else "",
                              met=r.server_conns <= TARGET_SERVER_CONNS if judged else None, note=conns_note))
        figures.append(Figure(NAME, f"{where}: database errors", errs, "errors", target="0" if judged else "",
                              met=errs == 0 if judged else None, note=kinds))
        if not r.started:
            continue
        poll_ms = per_poll_ms(r)
        for label, per, all_n, target in (("polling", r.poll, r.poll_all, TARGET_POLL_P99),
                                          ("broker wake-up", r.broker, r.broker_all, TARGET_BROKER_P99)):
            if not per:
                continue
            p99 = percentile(per, 99)
            figures.append(Figure(NAME, f"{where}: table-only revoke to held, {label}, p50", percentile(per, 50), "s"))
            if label == "polling":
                meaning = (f"poll every {POLL:.0f} s; at 10,000 the same, if PostgreSQL keeps up with "
                           f"{10_000 / POLL:,.0f} polls/s")
            else:
                burst = 10_000 * poll_ms / 1000 / 2  # every worker pulls at once; PostgreSQL has 2 cores here
                meaning = (f"all {r.started} pull at once; at 10,000 the burst is some {burst:.0f} s of "
                           "PostgreSQL CPU on 2 cores at this cost per pull")
            figures.append(Figure(NAME, f"{where}: table-only revoke to held, {label}, p99", p99, "s",
                                  target=f"≤ {target:.0f} s" if judged else "", met=p99 <= target if judged else None,
                                  note=f"slowest probe to all {r.started}: {max(all_n):.2f} s ({len(all_n)} probes); "
                                       + meaning))
            if label == "broker wake-up" and r.delivered:
                for pct in (50, 99):
                    figures.append(Figure(
                        NAME, f"{where}: broker wake-up, of which delivery (commit to handler), p{pct}",
                        percentile(r.delivered, pct), "s",
                        note="" if pct == 50 else
                        f"the broker's part of the p99 above: the broadcast from the revoking client through "
                        f"Redis to each of the {r.started} workers' own connection and its wake-up handler; "
                        "the rest is the pull from PostgreSQL"))
            if label == "broker wake-up" and r.burst_cpu:
                burst = median(r.burst_cpu)
                bouncer = (f"; PgBouncer {median(r.bouncer_burst_cpu):.2f} s on its one core"
                           if r.bouncer_burst_cpu else "")
                figures.append(Figure(
                    NAME, f"{where}: database CPU per broker wake-up (all {r.started} pull)", burst, "s",
                    note=f"PostgreSQL's backends, median of {len(r.burst_cpu)} wake-ups, idle polling taken "
                         f"out{bouncer}: the part of the burst the database serves, at least {burst / 2:.2f} s "
                         "on its 2 cores; the rest of the whole is delivery and the simulated workers' own "
                         "pulls, all N on the same 2 shared cores, where real workers have a CPU each"))
                if r.fleet_burst_cpu:
                    sims = median(r.fleet_burst_cpu)
                    bouncer_s = median(r.bouncer_burst_cpu) if r.bouncer_burst_cpu else 0.0
                    whole = burst + bouncer_s + sims
                    figures.append(Figure(
                        NAME, f"{where}: CPU per broker wake-up, all of it (database, pooler, simulated workers)",
                        whole, "s",
                        note=f"the simulated workers' own {sims:.2f} s (each one's wake-up handling and pull, "
                             f"{sims / r.started * 1000:.1f} ms apiece), PostgreSQL {burst:.2f} s, PgBouncer "
                             f"{bouncer_s:.2f} s; medians of {len(r.fleet_burst_cpu)} wake-ups, idle taken out: "
                             f"on these 2 shared cores the last of the {r.started} holds a probe no sooner than "
                             f"{whole / 2:.2f} s after it is written, the floor under the p99 above, where real "
                             "workers each pay only their own pull on their own CPU"))
            if label == "broker wake-up" and r.delivery_only:
                figures.append(Figure(
                    NAME, f"{where}: broker delivery alone (broadcast to handler, no pulls), p99",
                    percentile(r.delivery_only, 99), "s",
                    note=f"p50 {percentile(r.delivery_only, 50):.2f} s; the same fanout with handlers that pull "
                         "nothing: the broker's reach when these 2 cores are not also running every worker's pull"))
        figures.append(Figure(NAME, f"{where}: PostgreSQL CPU idle", r.cpu_idle, "s/min",
                              note=f"{poll_ms:.2f} ms per poll: 10,000 workers polling every {POLL:.0f} s would "
                                   f"keep {10_000 / POLL * poll_ms / 1000:.1f} cores busy"))
        figures.append(Figure(NAME, f"{where}: PostgreSQL CPU at 10 revokes/s", r.cpu_load, "s/min",
                              note="" if r.bouncer_cpu_load is None else
                              f"PgBouncer itself {r.bouncer_cpu_load:.2f} s/min (one process, one core at most)"))
        if r.restart_seconds is not None:
            per_load = r.restart_cpu / r.started
            figures.append(Figure(NAME, f"{where}: restart, each loading {r.restart_stored:,}: all loaded",
                                  r.restart_seconds, "s",
                                  note=f"peak {r.restart_conns} server connections; PostgreSQL {per_load * 1000:.0f} ms "
                                       f"CPU per load: 10,000 such loads need {10_000 * per_load / 60:.1f} CPU-minutes"))
    return figures


def run(quick: bool = False, keep: dict[str, Any] | None = None) -> list[Figure]:
    """``keep`` receives the raw results, for the plots."""
    sizes = QUICK_SIZES if quick else SIZES
    results: list[Result] = []
    with PgBouncer(PG_URL, pool_size=POOL_SIZE) as bouncer:
        for n in sizes:
            phases = Phases.quick() if quick else Phases.for_size(n)
            results.append(run_fleet("pgbouncer", n, phases, bouncer.url(), bouncer.pid))
    for n in sizes:  # short, no restart: these connections are everyone's
        phases = Phases.quick() if quick else Phases()
        direct = Phases(min(phases.idle_seconds, 10.0), min(phases.load_seconds, 10.0), min(phases.poll_probes, 3),
                        min(phases.broker_probes, 4), restart_stored=0)
        results.append(run_fleet("direct", n, direct, PG_URL, None))
    if keep is not None:
        keep["fleet"] = results
    return figures_for(results)


if __name__ == "__main__":
    main(TITLE, run)
