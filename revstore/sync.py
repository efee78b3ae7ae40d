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
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import RevstoreError
from .memory import WorkerMemory
from .store import DEFAULT, Changes, Revocation, RevocationStore, Target

logger = logging.getLogger("revstore")

#: Retry delays after a failed database call: 0.5 s doubling to 30 s.
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
#: At most one "database unavailable" warning per this many seconds.
WARN_EVERY = 30.0


@dataclass
class PendingWrite:
    """A revoke heard on the control channel, waiting to be committed."""

    targets: list[Target]
    terminate: bool = False
    signal: str | None = None
    expires: Any = DEFAULT
    reason: str | None = None
    revoked_by: str | None = None
    queued_at: float = field(default_factory=time.monotonic)

    def key(self) -> tuple[Any, ...]:
        return (self.terminate, self.signal, self.expires if self.expires is not DEFAULT else "default",
                self.reason, self.revoked_by)


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

    def __init__(self, store: RevocationStore, settings: Settings, memory: WorkerMemory, hostname: str) -> None:
        self.store = store
        self.settings = settings
        self.memory = memory
        self.hostname = hostname
        self.marker = 0
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
        #: when the thread last used the database (for revstore_pool_idle_timeout)
        self._last_used = time.monotonic()
        #: the LISTEN/NOTIFY listener, when there is one (PostgreSQL)
        self.listener: Any = None
        #: called (from the database thread) when there is something to
        #: apply, so the loop thread can drain at once instead of at its
        #: next timer tick; set by the bootstep
        self.wake_loop: Callable[[], None] | None = None

    @property
    def listener_live(self) -> bool:
        return bool(self.listener is not None and self.listener.live)

    def _interval(self) -> float:
        return self.settings.poll_interval(self.listener_live)

    # ------------------------------------------------------- loop thread

    def load(self) -> int:
        """Load every unexpired revocation into memory (blocking; at start-up)."""
        started = time.monotonic()
        rows, marker = self.store.load_active()
        self.memory.prepare()
        count = self.memory.load(rows)
        self.marker, self.loaded, self._needs_load = marker, True, False
        logger.info("revstore: loaded %d revocations in %.2fs from %s", count, time.monotonic() - started,
                    self.store.url.render_as_string(hide_password=True))
        return count

    def submit(self, write: PendingWrite) -> None:
        """Queue a write for the database thread; returns at once."""
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
            "database": self.store.url.render_as_string(hide_password=True),
            "loaded": self.loaded,
            "marker": self.marker,
            "revoked_in_memory": len(self.memory.revoked),
            "pending_writes": sum(len(w.targets) for w in list(self._pending)),
            "listener_live": self.listener_live,
            "listener_problem": None if self.listener is None else self.listener.problem,
            "poll_interval": self._interval(),
            "seconds_since_last_sync": None if self.last_sync_ok is None else round(time.monotonic() - self.last_sync_ok, 3),
        }

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after one last attempt to flush queued writes."""
        if self.listener is not None:
            self.listener.stop()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pending:
            logger.warning("revstore: %d queued revocation writes were not committed at shutdown; "
                           "they stay effective in other workers' memory only", len(self._pending))

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = min(self._sync_due, self._cleanup_due)
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
                    self._reread()
                    while self._extend:
                        self.store.extend(*self._extend[0])
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
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        reason = str(exc) if isinstance(exc, RevstoreError) else f"revstore: {type(exc).__name__}: {exc}"
        self._warn("%s (%d writes queued; retrying in %.1fs; revocations stay effective in memory)",
                   reason.splitlines()[0], len(self._pending), self._backoff)

    def _flush(self) -> None:
        """Commit queued writes, grouped so a burst becomes few transactions."""
        while self._pending:
            first = self._pending[0]
            batch = [w for w in list(self._pending) if w.key() == first.key()]
            targets = list(dict.fromkeys(t for w in batch for t in w.targets))
            started = time.monotonic()
            result = self.store.add(
                targets,
                terminate=first.terminate,
                signal=first.signal,
                expires=first.expires,
                reason=first.reason,
                revoked_by=first.revoked_by,
                if_needed=True,
                decided_ago=started - max(w.queued_at for w in batch),
            )
            ids = [t.value for t in targets if t.kind == "task"]
            self._post(lambda ids=ids: self.memory.committed(ids) or [])  # Celery's set is the loop's
            for w in batch:
                self._pending.remove(w)
            if result.unwritten:
                # restored since this worker heard the revoke: Celery's handler
                # put them in memory, the table says they may run
                self.recheck(targets)
            logger.debug("revstore: committed %d revocations in %.3fs", len(targets), time.monotonic() - started)

    def _reread(self) -> None:
        while self._recheck:
            targets = self._recheck[0]
            rows = self.store.get_many(targets)
            self._recheck.popleft()
            # bind this iteration's values: the job runs later, on the loop thread
            self._post(lambda targets=targets, rows=rows: self.memory.reconcile(targets, rows) or [])

    def _pull(self) -> None:
        changes: Changes = self.store.changes_since(self.marker)
        self.last_sync_ok = time.monotonic()
        if changes.reload_required:
            logger.warning("revstore: missed un-revokes that were already cleaned up; reloading everything")
            self._post(self._reload_job())
            return
        if changes.rows:
            rows = changes.rows
            self.memory.fetched.record(rows)
            self._post(lambda: self._apply(rows))
        self.marker = changes.marker

    def _apply(self, rows: list[Revocation]) -> list[Revocation]:
        live = self.memory.apply(rows)
        self.memory.fetched.applied(rows)
        return live

    def _reload_job(self) -> Callable[[], list[Revocation]]:
        rows, marker = self.store.load_active()
        self.marker, self._needs_load = marker, False

        def job() -> list[Revocation]:
            self.memory.prepare()
            self.memory.replace(rows, keep=self.pending_ids)
            if not self.loaded:
                logger.warning("revstore: loaded %d revocations after starting without the database", len(rows))
            self.loaded = True
            return []

        return job

    def _cleanup(self) -> None:
        jitter = random.uniform(0.8, 1.2)
        self._cleanup_due = time.monotonic() + self.settings.cleanup_interval * jitter
        deleted = self.store.purge_expired(self.settings.cleanup_batch, max_batches=20)
        if deleted:
            logger.info("revstore: deleted %d expired revocations", deleted)
