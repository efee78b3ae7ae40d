"""History and judgement of the randomized checker (tests/test_checker.py), in the style of Jepsen.

The driver records what it did and when (revokes and restores by every path,
task sends, faults, worker lives) and what it observed outside revstore
(each task execution, appended by the task itself to ``runs.jsonl``; the
workers' ``inspect revoked`` and the table at the end).  This module decides
from that record alone whether revstore kept its promise, stock Celery's
revoke semantics plus durability:

1. **No revoked task runs.**  A run at time *t* is a violation when some
   revoke of its id is *certain* at *t*: it completed, its settle allowance
   passed (see :meth:`Judge.deadline`), no restore could have overtaken it,
   it has not expired, no fault the promise does not cover (a rewind or a
   re-created database) could have taken it away, and for a stock
   broadcast some worker was up to hear it (stock Celery loses a broadcast
   nobody hears, so does revstore).
2. **Memory holds the table.**  After the run settles, every worker's
   ``inspect revoked`` holds every live revocation of the table (extras are
   allowed: stock Celery keeps broadcasts in memory too).
3. **Nothing restored or never revoked stays revoked.**  A send whose id is
   certainly not revoked from then on (never revoked, or restored for good
   and settled, or expired and cleaned up) to a worker that was not killed
   afterwards must run.

Everything ambiguous is left out rather than guessed: the checker must never
flag a race stock Celery allows (a task that started before the revoke
settled, a broadcast heard by nobody, a revoke and a restore within the
database clock's margin of each other, a killed worker's message lost after
its ack, a message published while its worker was being killed).  Times are ``time.time()`` on this host, where the workers and the
database run too.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Every fault the driver can inject, and what CI runs by default.  ``pgbouncer``
#: is not an injected fault but a setting: some workers reach PostgreSQL through
#: the transaction-mode PgBouncer.  CI runs every kind: ``kill_early``, ``rewind``
#: and ``recreate`` found violations before issue 21's fixes.
FAULT_KINDS = ("kill", "kill_early", "db_restart", "cut", "pgbouncer", "rewind", "recreate")
DEFAULT_FAULTS = FAULT_KINDS
#: Faults during which a worker cannot reach the database (delays sync and write-through).
OUTAGES = ("db_restart", "rewind", "recreate")
#: Paths whose row may be committed only by the write-through of a worker that heard the
#: broadcast: a stock broadcast, and the patched ``app.control.revoke`` when its own write
#: failed (it logs a warning and broadcasts without the durable flag, as stock would).
WRITE_THROUGH = ("stock", "patched")
#: How far a worker's estimate of the database clock may be off (one round trip,
#: plus the 50 ms write batching that dates a batch by its earliest revoke).
CLOCK_MARGIN = 1.0
#: A broadcast without the durable flag sent this long before a restore may still reach a worker that
#: was starting (or a solo worker busy with a task) after it: such a restore is not
#: taken as the last word.
STOCK_LATE = 30.0
#: A message published this soon after its consumer's SIGKILL completed may still go to the
#: dead consumer: on Redis, a blocking pop the server has not yet seen closed takes it and
#: it is lost, as it is with stock Celery.  Such a send is not judged.
DEAD_CONSUMER = 1.0
#: revstore's sync backoff tops out at 30 s; after an outage of L seconds the next
#: retry comes within about 2 L.
BACKOFF_MAX = 30.0


def parse_faults(spec: str | None) -> tuple[str, ...]:
    """``CHECKER_FAULTS``: comma-separated kinds, ``all``, or empty for the CI default."""
    if not spec:
        return DEFAULT_FAULTS
    kinds = FAULT_KINDS if spec.strip() == "all" else tuple(k.strip() for k in spec.split(",") if k.strip())
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"CHECKER_FAULTS: unknown kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    return kinds


@dataclass
class Op:
    """A revoke or restore through one path, as the writer saw it."""

    kind: str  # revoke | restore
    path: str  # api | patched | stock | cli
    id: str
    start: float
    end: float
    ok: bool
    expires: float | None = None
    error: str | None = None
    #: the op also broadcast the revoke (the client API reports whether its broadcast went out)
    broadcast: bool = False


@dataclass
class Send:
    """A task sent with ``task_id=id`` to one worker's queue."""

    id: str
    seq: int
    worker: str
    start: float
    end: float
    countdown: float = 0.0
    probe: bool = False  # sent after the run, to test the restored ids on every worker


@dataclass
class Fault:
    """A fault from its first effect (``start``) to recovery (``end``: worker ready, proxy up)."""

    kind: str
    start: float
    end: float
    worker: str | None = None
    #: rewind: when the copy (taken at ``start``) was put back; recreate: when the new schema was
    #: ready.  Writes that began later are not lost by the fault.
    rebuilt: float | None = None


@dataclass
class Life:
    """One run of a worker process: launched, ready (None until it is), SIGKILLed (None while it
    lives: ``down`` when the kill began, ``gone`` once the process was reaped)."""

    worker: str
    launched: float
    ready: float | None = None
    down: float | None = None
    gone: float | None = None


@dataclass
class Run:
    """One execution, as the task recorded it in runs.jsonl."""

    id: str
    seq: int
    host: str
    t: float


@dataclass
class History:
    """Everything the driver did and observed; threads append under the lock."""

    seed: int
    faults_enabled: tuple[str, ...]
    settle: float
    cleanup_interval: float
    ops: list[Op] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    #: worker -> ids the table held live (and not about to expire) but its memory lacked, at the end
    memory_missing: dict[str, list[str]] = field(default_factory=dict)
    end: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, item: Op | Send | Fault | Life) -> None:
        bucket = {Op: self.ops, Send: self.sends, Fault: self.faults, Life: self.lives}[type(item)]
        with self._lock:
            bucket.append(item)

    def launched(self, worker: str, at: float) -> None:
        self.add(Life(worker, at))

    def ready(self, worker: str, at: float) -> None:
        with self._lock:
            for life in self.lives:
                if life.worker == worker and life.ready is None:
                    life.ready = at

    def killed(self, worker: str, at: float, gone: float | None = None) -> None:
        with self._lock:
            for life in self.lives:
                if life.worker == worker and life.down is None:
                    life.down, life.gone = at, gone if gone is not None else at

    def read_runs(self, path: Path) -> None:
        lines = path.read_text().splitlines() if path.exists() else []
        self.runs = [Run(r["id"], r["seq"], r["host"].split("@")[0], r["t"]) for r in map(json.loads, lines)]

    def dump(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {key: value for key, value in asdict(self).items()}
        path.write_text(json.dumps(data, indent=1))
        return path

    def counts(self) -> dict[str, Any]:
        """What this run exercised: operations by kind and path, faults by kind, sends, runs."""
        ops: dict[str, int] = defaultdict(int)
        for op in self.ops:
            ops[f"{op.kind}:{op.path}{'+expires' if op.expires else ''}{'' if op.ok else ':failed'}"] += 1
        faults: dict[str, int] = defaultdict(int)
        for fault in self.faults:
            faults[fault.kind] += 1
        return {"ops": dict(sorted(ops.items())), "faults": dict(sorted(faults.items())),
                "sends": len(self.sends), "runs": len(self.runs)}


class Judge:
    """Decides from a :class:`History` alone; see the module docstring for the rules."""

    def __init__(self, history: History) -> None:
        self.h = history
        self.by_id: dict[str, list[Op]] = defaultdict(list)
        for op in history.ops:
            self.by_id[op.id].append(op)
        self.faults = sorted(history.faults, key=lambda f: f.start)
        self._deadlines: dict[int, float] = {}

    # ------------------------------------------------------------- revokes

    def recovery(self, fault: Fault) -> float:
        """Seconds after a fault ends before revstore has certainly caught up on its own."""
        if fault.kind in OUTAGES:
            return min(BACKOFF_MAX, 2 * (fault.end - fault.start)) + 1.0
        return 1.0

    def table_deadline(self, op: Op) -> float:
        """When every worker that runs connected has pulled the op's row: a poll and the drain
        after the op completed, pushed past every outage or connection cut it overlaps
        (pulls fail, then retry with backoff)."""
        key = id(op)
        if key not in self._deadlines:
            due = op.end + self.h.settle
            changed = True
            while changed:
                changed = False
                for fault in self.faults:
                    if (fault.kind in OUTAGES or fault.kind == "cut") and fault.start <= due and fault.end >= op.start:
                        later = fault.end + self.h.settle + self.recovery(fault)
                        if later > due:
                            due, changed = later, True
            self._deadlines[key] = due
        return self._deadlines[key]

    def commit_bound(self, op: Op) -> float:
        """By when the op's row was committed: the client's own write, or (WRITE_THROUGH)
        the write-through of a worker that heard it, which an outage delays."""
        return self.table_deadline(op) if op.path in WRITE_THROUGH else op.end

    def life_at(self, worker: str, t: float) -> Life | None:
        lives = [life for life in self.h.lives if life.worker == worker and life.launched <= t]
        return lives[-1] if lives else None

    @staticmethod
    def hears(life: Life, op: Op) -> bool:
        """The life was ready before the broadcast and lived on after it."""
        return life.ready is not None and life.ready <= op.start and (life.down is None or life.down >= op.end + 1.0)

    def deadline(self, op: Op, worker: str, t: float) -> float:
        """When the revoke certainly applies on ``worker`` (in its life at ``t``).

        A process launched after the row was committed loads it before its first
        task.  One that heard the op's broadcast (if it sent one) has it in
        memory.  Else it has it once it pulled: the table's deadline, and a
        poll after it became ready (it may have loaded before the commit and
        missed the broadcast while starting).
        """
        life = self.life_at(worker, t)
        if life is None:
            return math.inf
        if life.launched >= self.commit_bound(op) + CLOCK_MARGIN:
            return life.launched
        if op.broadcast and self.hears(life, op):
            return op.end + self.h.settle
        return max(self.table_deadline(op), (life.ready or t) + self.h.settle)

    def lost_by_database(self, op: Op, t: float) -> bool:
        """A rewind or re-created database that may have taken the op's row away before ``t``.

        Those faults lose writes by nature (a restore from backup, a new empty
        table): what they took is not judged, what was written after them is.
        """
        for fault in self.faults:
            if fault.kind not in ("rewind", "recreate") or fault.rebuilt is None or t <= fault.start:
                continue
            if (fault.kind == "rewind" and op.start < fault.rebuilt
                    and self.commit_bound(op) + BACKOFF_MAX > fault.start):
                return True
            if fault.kind == "recreate" and op.start < fault.rebuilt:
                return True
        return False

    def heard(self, op: Op) -> bool:
        """Some worker heard a stock broadcast (else nobody did: stock Celery loses it too)."""
        return any(self.hears(life, op) for life in self.h.lives)

    def overtaken(self, op: Op, t: float) -> bool:
        """A restore (even one that reported an error: it may have committed) started before ``t``
        and not clearly before the revoke."""
        return any(x.kind == "restore" and x.start < t and x.end > op.start - CLOCK_MARGIN
                   for x in self.by_id[op.id])

    def certain(self, op: Op, t: float, worker: str) -> bool:
        """The revoke ``op`` certainly applies on ``worker`` at time ``t``."""
        if op.kind != "revoke" or not op.ok or t < self.deadline(op, worker, t):
            return False
        if op.expires is not None and t >= op.start + op.expires - CLOCK_MARGIN:
            return False
        if op.path in WRITE_THROUGH and not self.heard(op):
            return False
        return not self.overtaken(op, t) and not self.lost_by_database(op, t)

    # ------------------------------------------------------------ must run

    def lifted(self, op: Op, at: float, eta_ids: set[str]) -> bool:
        """The revoke ``op`` certainly no longer applies anywhere from ``at`` on."""
        margin = STOCK_LATE if op.path in WRITE_THROUGH else CLOCK_MARGIN
        for x in self.by_id[op.id]:
            if (x.kind == "restore" and x.ok and x.start > op.end + margin and x.end + self.h.settle <= at
                    and not self.restore_at_risk(x)):
                return True
        if op.expires is not None and op.id not in eta_ids and not self.written_back(op):
            # expired, cleaned up and pulled; a held ETA task would have extended it
            gone = op.end + op.expires + self.h.cleanup_interval + self.h.settle + CLOCK_MARGIN
            return gone <= at
        return False

    def written_back(self, op: Op) -> bool:
        """The revocation was live when a rewind or re-created database lost it: workers write
        back what they held with its remaining lifetime rounded up (to the minute), so its
        expiry is no longer the one asked for."""
        return any(f.kind in ("rewind", "recreate") and f.rebuilt is not None
                   and op.start < f.rebuilt and f.start < op.end + (op.expires or 0.0)
                   for f in self.faults)

    def restore_at_risk(self, restore: Op) -> bool:
        """A rewind may revive what the restore lifted; a re-created database may drop its
        tombstone before every worker pulled it."""
        for fault in self.faults:
            if fault.kind not in ("rewind", "recreate") or fault.rebuilt is None:
                continue
            if restore.start < fault.rebuilt and self.commit_bound(restore) + self.h.settle + BACKOFF_MAX > fault.start:
                return True
        return False

    def must_run(self, send: Send, eta_ids: set[str]) -> bool:
        """The send's id is certainly not revoked from the send on, and its worker was never killed after
        it (nor just before it: see DEAD_CONSUMER)."""
        if any(life.worker == send.worker and life.down is not None
               and max(life.down, life.gone or life.down) + DEAD_CONSUMER >= send.start
               for life in self.h.lives):
            return False
        return all(op.kind == "restore" or self.lifted(op, send.start, eta_ids) for op in self.by_id[send.id])

    # ------------------------------------------------------------- verdict

    def violations(self) -> list[str]:
        found: list[str] = []
        for run in sorted(self.h.runs, key=lambda r: r.t):
            for op in self.by_id.get(run.id, []):
                if self.certain(op, run.t, run.host):
                    found.append(f"REVOKED TASK RAN: {run.id} seq {run.seq} on {run.host} at {run.t:.3f}, "
                                 f"{run.t - self.deadline(op, run.host, run.t):.1f}s after the {op.path} revoke "
                                 f"of {op.start:.3f}-{op.end:.3f} had settled there")
                    break
        ran = {(r.id, r.seq) for r in self.h.runs}
        eta_ids = {s.id for s in self.h.sends if s.countdown}
        for send in self.h.sends:
            if (send.id, send.seq) not in ran and self.must_run(send, eta_ids):
                what = "probe of a restored id" if send.probe else "send"
                found.append(f"NOT REVOKED BUT NEVER RAN: {what} {send.id} seq {send.seq} to {send.worker} "
                             f"at {send.start:.3f} (countdown {send.countdown:.1f}s)")
        for worker, missing in sorted(self.h.memory_missing.items()):
            if missing:
                found.append(f"MEMORY LACKS THE TABLE: {worker} misses {len(missing)} live revocations, "
                             f"e.g. {sorted(missing)[:5]}")
        return found

    def explain(self, task_id: str) -> list[str]:
        """What the history holds about one id, for a violation's report: a CI run's
        history file is gone by the time anyone reads the log."""
        lines = [f"  {op.kind} {op.path} {op.start:.3f}-{op.end:.3f} ok={op.ok} expires={op.expires} "
                 f"broadcast={op.broadcast}{' error=' + op.error if op.error else ''}" for op in self.by_id[task_id]]
        lines += [f"  send seq {s.seq} to {s.worker} {s.start:.3f} countdown {s.countdown:.1f}"
                  for s in self.h.sends if s.id == task_id]
        lines += [f"  ran seq {r.seq} on {r.host} at {r.t:.3f}" for r in self.h.runs if r.id == task_id]
        workers = {s.worker for s in self.h.sends if s.id == task_id}
        lines += [f"  life {life.worker}: launched {life.launched:.3f} ready {life.ready} down {life.down} gone {life.gone}"
                  for life in self.h.lives if life.worker in workers]
        lines += [f"  fault {f.kind} {f.start:.3f}-{f.end:.3f} {f.worker or ''}" for f in self.faults]
        return lines

    def restored_ids(self) -> list[str]:
        """Ids whose last word is a settled restore: probes sent now must run on every worker."""
        now = time.time()
        eta_ids = {s.id for s in self.h.sends if s.countdown}
        return sorted(i for i, ops in self.by_id.items()
                      if any(op.kind == "restore" for op in ops)
                      and all(op.kind == "restore" or self.lifted(op, now, eta_ids) for op in ops))

    def exercised(self) -> dict[str, int]:
        """How many sends met a certain revocation (the ones the promise is about), and how many must run."""
        eta_ids = {s.id for s in self.h.sends if s.countdown}
        revoked = sum(1 for s in self.h.sends
                      if any(self.certain(op, s.end + s.countdown, s.worker) for op in self.by_id.get(s.id, [])))
        return {"sends_certainly_revoked": revoked,
                "sends_that_must_run": sum(1 for s in self.h.sends if self.must_run(s, eta_ids))}


def first(items: Iterable[str], n: int) -> str:
    """At most ``n`` lines of a report, saying how many were left out."""
    items = list(items)
    shown = "\n".join(items[:n])
    return shown + (f"\n... and {len(items) - n} more" if len(items) > n else "")

