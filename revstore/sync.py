"""One worker's link to the table: write-through, pulling changes, cleanup.

All database I/O of a worker happens on one background thread with one
connection, so a slow or dead database never blocks Celery's event loop.
The loop thread only hands over writes (:meth:`RevocationSync.submit`) and
applies what the thread fetched (:meth:`RevocationSync.drain`, called from
the consumer's timer): Celery's revoked set is only ever mutated on the loop
thread, as Celery itself does.

Writes that fail (database down) stay queued in memory and are retried with
backoff; the revocation is already effective in memory meanwhile.

The class is assembled from one class per job: the shared state
(:mod:`revstore.sync_state`), start-up and the local snapshot
(:mod:`revstore.sync_local`), write-through (:mod:`revstore.sync_writes`),
reloads and a database changed under the worker
(:mod:`revstore.sync_rewind`); this module keeps the thread, the pull and
the cleanup.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import mask_url
from .dbclock import epoch
from .errors import RevstoreError
from .identity import distrust, witness_lost
from .pending import PendingWrite
from .records import Changes, Revocation
from .sync_local import LocalCopy
from .sync_state import RateLimitedWarning
from .sync_writes import MERGE_WINDOW, WriteThrough

__all__ = ["MERGE_WINDOW", "PendingWrite", "RateLimitedWarning", "RevocationSync"]

logger = logging.getLogger("revstore")

#: Retry delays after a failed database call: 0.5 s doubling to 30 s.
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


class RevocationSync(LocalCopy, WriteThrough):
    """Keeps one worker's memory and the shared table in step."""

    def drain(self, terminate: Callable[[list[Revocation]], None] | None = None) -> None:
        """Apply what the database thread fetched; runs on the loop thread."""
        while self._inbox:
            job = self._inbox.popleft()
            rows = job()
            if rows and terminate is not None:
                terminate(rows)
        self.memory.purge()

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
