"""How a worker fills its memory at start, and keeps its local snapshot of the table up to date.

A worker starts from its local snapshot plus the changes since its marker
when the snapshot is fresh (faster than the table, and possible while the
database is down), else from the table; the revokes its last run spooled
but did not commit are replayed either way.  Apart from the sync loop so
that what the worker's own files hold, and when they are trusted, reads in
one place.  It builds on :class:`Rewind`: a snapshot may belong to a
database that has changed since.
"""

from __future__ import annotations

import logging
import time

from .config import mask_url
from .dbclock import epoch
from .frames import StateDamaged
from .identity import DbIdentity, distrust
from .pending import PendingWrite
from .snapshot_files import SnapshotRead
from .records import Changes, Revocation
from .sync_rewind import Rewind

logger = logging.getLogger("revstore")


class LocalCopy(Rewind):
    """Start-up loading, spool replay and the local snapshot's writes."""

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
