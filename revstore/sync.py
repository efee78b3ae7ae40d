"""One worker's link to the table: write-through, pulling changes, cleanup.

All database I/O of a worker happens on one background thread with one
connection, so a slow or dead database never blocks Celery's event loop.
The loop thread only hands over writes (:meth:`RevocationSync.submit`) and
applies what the thread fetched (:meth:`RevocationSync.drain`, called from
the consumer's timer): Celery's revoked set is only ever mutated on the loop
thread, as Celery itself does.

Writes that fail (database down) stay queued in memory and are retried with
backoff; the revocation is already effective in memory meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import Settings, mask_url
from .errors import RevstoreError
from .identity import DbIdentity, distrust, witness_lost
from .localstate import DbClock, LocalState, SnapshotRead, StateDamaged, epoch
from .memory import WorkerMemory
from .store import DEFAULT, EXTEND_SLACK, Changes, Revocation, RevocationStore, Snapshot, Target

logger = logging.getLogger("revstore")

#: Retry delays after a failed database call: 0.5 s doubling to 30 s.
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
#: At most one "database unavailable" warning per this many seconds.
WARN_EVERY = 30.0
#: Queued writes heard within this many seconds of each other share a transaction.
MERGE_WINDOW = 0.05


@dataclass
class PendingWrite:
    """A revoke heard on the control channel, waiting to be committed."""

    targets: list[Target]
    terminate: bool = False
    signal: str | None = None
    expires: Any = DEFAULT
    reason: str | None = None
    revoked_by: str | None = None
    #: when it was heard, on the database's clock (see DbClock); set by submit
    heard: float | None = None
    #: its record in the spool (None: not spooled)
    seq: int | None = None

    def key(self) -> tuple[Any, ...]:
        return (self.terminate, self.signal, self.expires if self.expires is not DEFAULT else "default",
                self.reason, self.revoked_by)

    def record(self) -> dict[str, Any]:
        """As a spool record: plain JSON, read back by :meth:`from_record` after a crash."""
        record: dict[str, Any] = {"term": self.terminate, "sig": self.signal, "reason": self.reason,
                                  "exp": "default" if self.expires is DEFAULT else self.expires,
                                  "by": self.revoked_by, "heard": self.heard}
        if all(t.kind == "task" for t in self.targets):
            # task ids (never containing NUL) as one string: a million-id revoke
            # is spooled on the event loop, and a list of lists costs seconds
            record["ids"] = "\x00".join(t.value for t in self.targets)
        else:
            record["t"] = [[t.kind, t.header, t.value] for t in self.targets]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], seq: int) -> PendingWrite:
        expires = record.get("exp", "default")
        if "ids" in record:
            targets = [Target("task", i) for i in record["ids"].split("\x00")]
        else:
            targets = [Target(k, v, h) for k, h, v in record["t"]]
        return cls(targets, bool(record.get("term")), record.get("sig"),
                   DEFAULT if expires == "default" else expires, record.get("reason"), record.get("by"),
                   float(record["heard"]), seq)

    def lifetime(self, default: float | None, age: float) -> float | None:
        """Seconds it has left ``age`` seconds after it was heard (<= 0: expired; None: never)."""
        base = default if self.expires is DEFAULT else self.expires
        return None if base is None else float(base) - age


class RateLimitedWarning:
    """Log a warning at most once per ``every`` seconds, counting the rest."""

    def __init__(self, every: float = WARN_EVERY) -> None:
        self.every, self._last, self._suppressed = every, 0.0, 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            if self._suppressed:
                msg += f" ({self._suppressed} similar warnings suppressed)"
            logger.warning(msg, *args)
            self._last, self._suppressed = now, 0
        else:
            self._suppressed += 1


class RevocationSync:
    """Keeps one worker's memory and the shared table in step."""

    def __init__(self, store: RevocationStore, settings: Settings, memory: WorkerMemory, hostname: str,
                 state: LocalState | None = None) -> None:
        self.store = store
        #: this worker's spool and snapshot files; None: nothing kept locally
        self.state = state
        self.clock = DbClock()
        #: set while running on the local snapshot, until the first pull
        self.offline: SnapshotRead | None = None
        #: a full load whose snapshot base is still to be written (at once, by the database thread),
        #: and whether it starts the snapshot over (a load from the table) or compacts it
        self._base_due: tuple[Snapshot, int, float, bool] | None = None
        self._snapshot_warn = RateLimitedWarning()
        self._committed_seq = 0
        self._spool_full = RateLimitedWarning()
        self.settings = settings
        self.memory = memory
        self.hostname = hostname
        self.marker = 0
        #: which database the marker belongs to (None: not known yet)
        self.identity: DbIdentity | None = None
        #: when this worker was last in step with that database, on its clock (epoch seconds)
        self._trusted_at: float | None = None
        #: the last time the database was found changed under this worker, and what was seen
        self.rewound: dict[str, Any] | None = None
        #: revocations this worker held that a changed database lost, and since when it held them
        self._write_back: deque[tuple[dict[Target, float | None], float | None]] = deque()
        #: a change was seen and logged, its reload not done yet (a retry must not log it again)
        self._rewinding = False
        #: a row pulled at the marker's version, and that version: a table put back from a copy
        #: loses it even after later writes take the clock past the marker again (see changes_since)
        self._witness: tuple[Target, int] | None = None
        #: the snapshot is in memory (set on the loop thread, when applied)
        self.loaded = False
        #: the database thread still has to fetch the first snapshot
        self._needs_load = True
        self._pending: deque[PendingWrite] = deque()
        self._inbox: deque[Callable[[], list[Revocation]]] = deque()
        self._recheck: deque[list[Target]] = deque()
        self._extend: deque[tuple[list[Target], float]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync_due = 0.0
        self._cleanup_due = time.monotonic() + random.uniform(0.1, 1.0) * settings.cleanup_interval
        self._backoff = 0.0
        self._retry_at = 0.0
        self._warn = RateLimitedWarning()
        self.last_sync_ok: float | None = None
        #: counters for revstore_status (and the console's /metrics): committed write
        #: transactions, database failures with writes queued, pulls, full reloads
        self.commits = self.commit_failures = self.polls = self.reloads = 0
        #: when the thread last used the database (for revstore_pool_idle_timeout)
        self._last_used = time.monotonic()
        #: the LISTEN/NOTIFY listener, when there is one (PostgreSQL)
        self.listener: Any = None
        #: called (from the database thread) when there is something to
        #: apply, so the loop thread can drain at once instead of at its
        #: next timer tick; set by the bootstep
        self.wake_loop: Callable[[], None] | None = None
        #: public hook: called (from the database thread) with each error the thread
        #: retries after, e.g. to count them (bench/fleetsim.py); it must not raise
        self.on_error: Callable[[Exception], None] | None = None

    @property
    def listener_live(self) -> bool:
        return bool(self.listener is not None and self.listener.live)

    def _interval(self) -> float:
        return self.settings.poll_interval(self.listener_live)

    # ------------------------------------------------------- loop thread

    def load(self) -> int:
        """Load every unexpired revocation into memory (blocking; at start-up).

        From the local snapshot plus the changes since its marker when there
        is a fresh one (faster than the table for large sets: see
        docs/benchmarks.md), else from the table.
        """
        started = time.monotonic()
        local = self._read_local()
        if local is not None and local.age <= self.settings.snapshot_max_age:
            db_now = epoch(self.store.db_now())
            self.clock.anchor(db_now)
            changes = self.store.changes_since(local.marker)
            why = distrust(DbIdentity.from_record(local.db_identity), changes.identity, local.marker, changes.clock)
            if why is not None:
                self._note_rewind(why, local.marker, "the local snapshot is not used; loading from the table")
            elif not changes.reload_required:
                self.identity, self._trusted_at = changes.identity, db_now
                self._load_local(local, db_now)
                self.memory.apply(changes.rows)
                count = self.memory.live_count()
                self.marker, self.loaded, self._needs_load = changes.marker, True, False
                if self.state is not None:
                    self._journal(changes, local.marker, db_now, force=True)
                self.apply_pending()
                logger.info("revstore: loaded %d revocations in %.2fs from the local snapshot and %d changes "
                            "since from %s", count, time.monotonic() - started, len(changes.rows),
                            mask_url(self.store.url))
                return count
        self.identity = self.store.identity()
        rows, marker = self.store.load_active()
        db_now = epoch(self.store.db_now())
        self.clock.anchor(db_now)
        self.memory.prepare()
        count = self.memory.load(rows)
        self.marker, self.loaded, self._needs_load = marker, True, False
        self._trusted_at = db_now
        if self.state is not None:
            # written by the database thread before its first pull, so that a
            # worker killed (or cut off) seconds after it starts has a snapshot
            self._base_due = (rows, marker, db_now, True)
        self.apply_pending()
        logger.info("revstore: loaded %d revocations in %.2fs from %s", count, time.monotonic() - started,
                    mask_url(self.store.url))
        return count

    def start_from_snapshot(self) -> SnapshotRead | None:
        """The database is down at start: load the local snapshot if it is fresh enough.

        Returns what was loaded, or None (no snapshot, unreadable, or older
        than revstore_snapshot_max_age): the worker must not start blind.
        """
        local = self._read_local()
        if local is None or local.age > self.settings.snapshot_max_age:
            return None
        self.clock.resume(local.db_time, local.wall_time)
        self._load_local(local, self.clock.now())
        self.marker, self.loaded, self._needs_load = local.marker, True, False
        # compared with the database at the first pull
        self.identity, self._trusted_at = DbIdentity.from_record(local.db_identity), local.db_time
        self.offline = local
        self.apply_pending()
        return local

    def _read_local(self) -> SnapshotRead | None:
        if self.state is None:
            return None
        try:
            local = self.state.snapshot.read()
        except StateDamaged as exc:
            kept = self.state.snapshot.set_aside()
            logger.error("%s; set aside as %s, not used", exc, kept)
            return None
        if local is not None and local.damaged:
            logger.error("revstore: snapshot journal %s ends in %d unreadable bytes (a write cut short); using the "
                         "snapshot as of marker %d", self.state.snapshot.journal_path, local.damaged, local.marker)
        return local

    def _load_local(self, local: SnapshotRead, db_now: float) -> int:
        self.memory.prepare()
        count = self.memory.load(local.base, shift=local.base_time - db_now)
        self.memory.apply(local.revocations(db_now))
        self.memory.purge()
        return count

    def replay_spool(self) -> int:
        """Queue the revokes an earlier run spooled but did not commit; they apply once loaded."""
        if self.state is None:
            return 0
        records = self.state.open_spool()
        for seq, record in enumerate(records, 1):
            try:
                self._pending.append(PendingWrite.from_record(record, seq))
            except (KeyError, TypeError, ValueError) as exc:
                logger.error("revstore: spool record %d of %s is unusable (%s); skipped", seq,
                             self.state.spool.path, exc)
        if records:
            logger.warning("revstore: %d revokes from the spool %s are replayed", len(records), self.state.spool.path)
        return len(records)

    def apply_pending(self) -> None:
        """Put queued (spooled) revokes in memory: a restart must honour what the worker heard."""
        now = self.clock.now()
        rows = []
        for write in list(self._pending):
            left = write.lifetime(self.settings.default_expires, now - (write.heard or now))
            if left is not None and left <= 0:
                continue
            rows += [Revocation(t, write.terminate, write.signal, write.reason, write.revoked_by, None, None,
                                0, True, left) for t in write.targets]
        self.memory.apply(rows)

    def submit(self, write: PendingWrite) -> None:
        """Spool a write, then queue it for the database thread.

        The spool append is a synchronous disk write (``O_DSYNC``, a fraction
        of a millisecond): once it returns, a ``SIGKILL`` or a power cut
        cannot lose the revoke.
        """
        if write.heard is None:
            write.heard = self.clock.now()
        if self.state is not None:
            record = write.record()
            # which database it was heard against; replayed whatever it is (what was heard is still true)
            record["db"] = None if self.identity is None else self.identity.as_record()
            write.seq = self.state.spool.append(record)
            if write.seq is None:
                self._spool_full("revstore: the spool %s is full or not writable; %d revocations are effective in "
                                 "memory and queued, but not on disk", self.state.spool.path, len(write.targets))
        self._pending.append(write)
        self._wake.set()

    def recheck(self, targets: list[Target]) -> None:
        """Re-read ``targets`` from the table and make memory match; returns at once.

        For a durable broadcast older than what this worker has synced: the
        table, not the late message, decides.
        """
        self._recheck.append(targets)
        self._wake.set()

    def extend(self, targets: list[Target], expires: float) -> None:
        """Queue keeping ``targets``' revocations for ``expires`` seconds more; returns at once."""
        self._extend.append((targets, expires))
        self._wake.set()

    def request_sync(self) -> None:
        """Pull changes now rather than at the next interval (reconnects, notifications)."""
        self._sync_due = 0.0
        self._wake.set()

    def drain(self, terminate: Callable[[list[Revocation]], None] | None = None) -> None:
        """Apply what the database thread fetched; runs on the loop thread."""
        while self._inbox:
            job = self._inbox.popleft()
            rows = job()
            if rows and terminate is not None:
                terminate(rows)
        self.memory.purge()

    def _post(self, job: Callable[[], list[Revocation]]) -> None:
        """Hand a job to the loop thread and wake it."""
        self._inbox.append(job)
        if self.wake_loop is not None:
            self.wake_loop()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_targets(self) -> set[Target]:
        """Targets heard on the control channel and not yet committed."""
        return {t for w in list(self._pending) for t in w.targets}

    @property
    def pending_ids(self) -> set[str]:
        return {t.value for t in self.pending_targets if t.kind == "task"}

    # -------------------------------------------------- database thread

    def start(self) -> None:
        if self._thread is None:
            self._sync_due = time.monotonic() + self._interval()
            self._thread = threading.Thread(target=self._run, name="revstore-sync", daemon=True)
            self._thread.start()

    def status(self) -> dict[str, Any]:
        """For `celery inspect revstore_status` and logs."""
        return {
            "database": mask_url(self.store.url),
            "loaded": self.loaded,
            "marker": self.marker,
            # pulls fetched up to the marker, not yet applied by the loop thread (0: memory is at the marker)
            "unapplied": len(self._inbox),
            # extensions of held ETA tasks' revocations queued for the database thread
            "pending_extends": len(self._extend),
            "revoked_in_memory": len(self.memory.revoked),
            "pending_writes": sum(len(w.targets) for w in list(self._pending)),
            "listener_live": self.listener_live,
            "listening": self.listener is not None,  # listening is on here (PostgreSQL, revstore_listen)
            "listener_problem": None if self.listener is None else self.listener.problem,
            "poll_interval": self._interval(),
            "seconds_since_last_sync": None if self.last_sync_ok is None else round(time.monotonic() - self.last_sync_ok, 3),
            "state_dir": None if self.state is None else str(self.state.folder),
            "spool_bytes": None if self.state is None else self.state.spool.size,
            "spool_records": None if self.state is None else len(self._pending),
            "snapshot_file_age": None if self.state is None else _newest_age(
                self.state.snapshot.base_path, self.state.snapshot.journal_path),
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "polls": self.polls,
            "reloads": self.reloads,
            # running on the local snapshot (database down since start): how old it is
            "from_snapshot": self.offline is not None,
            "snapshot_age": None if self.offline is None else round(self.offline.age, 1),
            # the last time the database was found changed under this worker: {"at", "what"}
            "rewound": self.rewound,
        }

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after one last attempt to flush queued writes."""
        if self.listener is not None:
            self.listener.stop()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pending and self.state is not None:
            logger.warning("revstore: %d queued revocation writes were not committed at shutdown; they stay in the "
                           "spool %s and are replayed at the next start", len(self._pending), self.state.spool.path)
        elif self._pending:
            logger.warning("revstore: %d queued revocation writes were not committed at shutdown; "
                           "they stay effective in other workers' memory only", len(self._pending))
        if self.state is not None:
            self.state.close()

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = min(self._sync_due, self._cleanup_due)
            if self._base_due is not None:
                due = now
            if self._pending:
                due = min(due, self._retry_at)
            idle_timeout = self.settings.pool_idle_timeout
            release_at = None if idle_timeout is None else self._last_used + idle_timeout
            if release_at is not None and release_at < due:
                if self._wake.wait(max(0.0, release_at - now)) is False:
                    self.store.release_idle()  # nothing to do before the timeout: free the connection
                    self._last_used = float("inf")  # until the next use
                    continue
            else:
                self._wake.wait(max(0.0, due - now))
            self._wake.clear()
            stopping = self._stop.is_set()
            now = time.monotonic()
            if now >= self._retry_at:
                self._last_used = now
                try:
                    if self._needs_load:
                        self._post(self._reload_job())
                    self._flush()
                    if stopping:
                        return
                    self._restore_lost()
                    self._save_snapshot()
                    self._reread()
                    while self._extend:
                        self.store.extend(*self._extend[0], extended_by=self.hostname[:255])
                        self._extend.popleft()
                    if now >= self._sync_due:
                        self._pull()
                        self._sync_due = time.monotonic() + self._interval()
                    if now >= self._cleanup_due:
                        self._cleanup()
                    self._backoff = 0.0
                except Exception as exc:  # never let the thread die
                    self._failed(exc)
            if stopping:
                return

    def _failed(self, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        if self._pending:
            self.commit_failures += 1
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        reason = str(exc) if isinstance(exc, RevstoreError) else f"revstore: {type(exc).__name__}: {exc}"
        self._warn("%s (%d writes queued; retrying in %.1fs; revocations stay effective in memory)",
                   reason.splitlines()[0], len(self._pending), self._backoff)

    def _flush(self) -> None:
        """Commit queued writes, grouped so a burst becomes few transactions."""
        while self._pending:
            first = self._pending[0]
            # one transaction for writes heard close together: the store takes one
            # "heard" time for all of them, the earliest, so a restore made after a
            # revoke was heard always wins (one made up to MERGE_WINDOW before may too)
            heard = first.heard or 0.0
            batch = [w for w in list(self._pending)
                     if w.key() == first.key() and abs((w.heard or 0.0) - heard) <= MERGE_WINDOW]
            targets = list(dict.fromkeys(t for w in batch for t in w.targets))
            started = time.monotonic()
            heard = min(w.heard or 0.0 for w in batch)
            age = self.clock.now() - heard
            expires = first.expires
            if age > EXTEND_SLACK.total_seconds():  # replayed from the spool: expiry counts from when it was heard
                expires = first.lifetime(self.settings.default_expires, age)
            result = None
            if expires is None or expires is DEFAULT or expires > 0:
                result = self.store.add(
                    targets,
                    terminate=first.terminate,
                    signal=first.signal,
                    expires=expires,
                    reason=first.reason,
                    revoked_by=first.revoked_by,
                    if_needed=True,
                    heard_at=datetime.fromtimestamp(heard, timezone.utc),
                )
                self.commits += 1
            ids = [t.value for t in targets if t.kind == "task"]
            self._post(lambda ids=ids: self.memory.committed(ids) or [])  # Celery's set is the loop's
            for w in batch:
                self._pending.remove(w)
                self._committed_seq = max(self._committed_seq, w.seq or 0)
            if result is not None and result.unwritten:
                # restored since this worker heard the revoke: Celery's handler
                # put them in memory, the table says they may run
                self.recheck(targets)
            logger.debug("revstore: committed %d revocations in %.3fs", len(targets), time.monotonic() - started)
        if self.state is not None and self._committed_seq:
            self.state.spool.clear_if(self._committed_seq)

    def _save_snapshot(self) -> None:
        """Rewrite the local snapshot's base after a full load, or when its journal has grown."""
        if self.state is None:
            return
        if self._base_due is None and self.state.snapshot.needs_compaction() and self.offline is None:
            rows, marker = self.store.load_active()
            self._base_due = (rows, marker, epoch(self.store.db_now()), False)
        if self._base_due is not None:
            rows, marker, db_now, reset = self._base_due
            self.state.snapshot.db_identity = None if self.identity is None else self.identity.as_record()
            self._base_due = None
            try:
                self.state.snapshot.write_base(rows, marker, db_now, reset=reset)
            except OSError as exc:  # the table is still there: sync goes on, the snapshot ages
                self._snapshot_warn("revstore: cannot write the local snapshot %s: %s",
                                    self.state.snapshot.base_path, exc)

    def _journal(self, changes: Changes, since: int, db_now: float, force: bool = False) -> None:
        """Record a pull in the local snapshot; a disk error costs the snapshot's freshness, not the sync."""
        assert self.state is not None
        try:
            self.state.snapshot.append(changes.rows, changes.marker, db_now, since=since, force=force)
        except OSError as exc:
            self._snapshot_warn("revstore: cannot write the local snapshot journal %s: %s",
                                self.state.snapshot.journal_path, exc)

    def _reread(self) -> None:
        while self._recheck:
            targets = self._recheck[0]
            rows = self.store.get_many(targets)
            self._recheck.popleft()
            # bind this iteration's values: the job runs later, on the loop thread
            self._post(lambda targets=targets, rows=rows: self.memory.reconcile(targets, rows) or [])

    def _pull(self) -> None:
        since, witness = self.marker, self._witness
        changes: Changes = self.store.changes_since(since, None if witness is None else witness[0])
        self.last_sync_ok = time.monotonic()
        self.polls += 1
        if self.offline is not None:
            logger.warning("revstore: the database is back; catching up from the local snapshot's marker %d",
                           self.marker)
            self.offline = None
        why = distrust(self.identity, changes.identity, self.marker, changes.clock)
        if why is None and witness is not None:
            why = witness_lost(witness[0], witness[1], changes.witness, changes.purged)
        if why is not None:
            self._witness = None
            if not self._rewinding:
                self._note_rewind(why, self.marker, "reloading from the table, keeping every revocation held "
                                  "and writing back those the table lost")
            self._rewinding = True
            self._post(self._reload_job(keep=True))
            self._rewinding = False
            return
        if changes.reload_required:
            logger.warning("revstore: missed un-revokes that were already cleaned up; reloading everything")
            self._post(self._reload_job())
            return
        if changes.now is not None:
            self.clock.anchor(changes.now)  # the database clock, read with the rows
            self._trusted_at = epoch(changes.now)
        if self.identity is None:
            self.identity = changes.identity
        if changes.rows:
            rows = changes.rows
            self.memory.fetched.record(rows)
            self._post(lambda: self._apply(rows))
            last = rows[-1]  # in version order: a row at the new marker's version
            self._witness = (last.target, last.version)
        self.marker = changes.marker
        if self.state is not None:
            self._journal(changes, since, self.clock.now())

    def _apply(self, rows: list[Revocation]) -> list[Revocation]:
        live = self.memory.apply(rows)
        self.memory.fetched.applied(rows)
        return live

    def _reload_job(self, keep: bool = False) -> Callable[[], list[Revocation]]:
        """Load the table; the returned job puts it in memory on the loop thread.

        ``keep``: the database changed under this worker (see
        revstore.identity), so what memory holds is added to, never dropped,
        and what the table lacks is queued to be written back.
        """
        held_since = self._trusted_at
        self.identity = self.store.identity()
        rows, marker = self.store.load_active()
        self.reloads += 1
        db_now = epoch(self.store.db_now())
        self.clock.anchor(db_now)
        self.marker, self._needs_load, self._trusted_at = marker, False, db_now
        if self.state is not None:
            self._base_due = (rows, marker, db_now, True)

        def job() -> list[Revocation]:
            self.memory.prepare()
            if keep:
                stored = {Target("task", i) for i in rows.task_ids}
                stored.update(Target(k, v, h) for k, h, v, _ in rows.others)  # type: ignore[arg-type]
                pending = self.pending_targets
                lost = {t: left for t, left in self.memory.held().items() if t not in stored and t not in pending}
                self.memory.load(rows)
                if lost:
                    self._write_back.append((lost, held_since))
                    self._wake.set()
                return []
            self.memory.replace(rows, keep=self.pending_ids)
            if not self.loaded:
                logger.warning("revstore: loaded %d revocations after starting without the database", len(rows))
            self.loaded = True
            return []

        return job

    def _note_rewind(self, why: str, marker: int, action: str) -> None:
        """Say once what was seen (one line), and record it for ``revstore_status`` and ``revstore stats``."""
        logger.warning("revstore: the database at %s changed under this worker: %s; its marker %d is not trusted; "
                       "%s", mask_url(self.store.url), why, marker, action)
        self.rewound = {"at": datetime.fromtimestamp(self.clock.now(), timezone.utc).isoformat(), "what": why}
        if self.state is not None:
            # the journal continues the other database's snapshot: nothing goes into it until the new base
            self.state.snapshot.generation = ""
        try:
            self.store.record_rewind(f"{self.hostname}: {why}")
        except RevstoreError as exc:  # only a note for operators: the reload must not wait for it
            self._warn("%s (the note for `revstore stats` was not written)", str(exc).splitlines()[0])

    def _restore_lost(self) -> None:
        """Write back what this worker held and a changed database lost, unless restored there since.

        Each revocation keeps what it had left (rounded up, so a few
        writes cover any number); ``heard_at`` is when this worker was last
        in step with the old database, so a restore made in the new one
        after that wins, and the worker then drops what it held.
        """
        while self._write_back:
            lost, held_since = self._write_back[0]
            heard = None if held_since is None else datetime.fromtimestamp(held_since, timezone.utc)
            groups: dict[float | None, list[Target]] = {}
            for target, left in lost.items():
                groups.setdefault(_lifetime(left), []).append(target)
            written = 0
            for expires, targets in groups.items():
                result = self.store.add(targets, expires=expires, revoked_by=self.hostname, heard_at=heard,
                                        reason="written back: the database had lost it")
                written += result.changed
                if result.unwritten:
                    self.recheck(targets)  # restored since: the table decides
            self._write_back.popleft()
            logger.info("revstore: wrote back %d of %d revocations the database had lost", written, len(lost))

    def _cleanup(self) -> None:
        jitter = random.uniform(0.8, 1.2)
        self._cleanup_due = time.monotonic() + self.settings.cleanup_interval * jitter
        deleted = self.store.purge_expired(self.settings.cleanup_batch, max_batches=20)
        if deleted:
            logger.info("revstore: deleted %d expired revocations", deleted)
        aged = self.store.purge_audit(self.settings.cleanup_batch, max_batches=20)
        if aged:
            logger.info("revstore: deleted %d audit rows older than revstore_audit_ttl", aged)


def _newest_age(*paths: Path) -> float | None:
    """Seconds since the newest of ``paths`` was written (the local snapshot's freshness); None: none exists."""
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:  # not written yet, or being replaced
            pass
    return round(max(0.0, time.time() - max(times)), 1) if times else None


def _lifetime(left: float | None) -> float | None:
    """A written-back revocation's expiry: what it had left, rounded up to the minute (the hour past one)."""
    if left is None:
        return None
    step = 60.0 if left < 3600 else 3600.0
    return max(step, -(-left // step) * step)
