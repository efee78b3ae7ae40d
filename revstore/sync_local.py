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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import mask_url
from .dbclock import epoch
from .frames import StateDamaged
from .identity import DbIdentity, distrust
from .set_entries import RELEASE_AFTER, TaskEntries, build_entries, release_freed_memory
from .pending import PendingWrite
from .snapshot_files import SnapshotRead
from .records import Changes, Revocation, Snapshot, gc_paused
from .sync_rewind import Rewind
from .window import SchemaState

logger = logging.getLogger("revstore")


@dataclass
class Fetched:
    """What a start-up load read, before memory is touched (see :meth:`LocalCopy.prefetch`)."""

    #: when the reading began (monotonic): the load's logged time counts from here
    started: float
    #: the table's rows, or the local snapshot's base
    rows: Snapshot
    marker: int
    db_now: float
    identity: DbIdentity | None
    #: ``rows``' task ids built into Celery's set layout; None: the set's own add fills it
    entries: TaskEntries | None
    #: the local snapshot and the changes since its marker, when those are what is loaded
    local: SnapshotRead | None = None
    changes: Changes | None = None


class LocalCopy(Rewind):
    """Start-up loading, spool replay and the local snapshot's writes."""

    def prefetch(self, check: Callable[[SchemaState | None], None] | None = None) -> None:
        """Start :meth:`load`'s reading on a helper thread; call once, before Celery starts the pool.

        A million revocations take the database about a second to send
        and this process as long to build into Celery's set.  The worker
        meanwhile forks its pool, connects to the broker and (with mingle)
        waits a second for its peers' replies, so the reading and the
        building are done by the time the consumer starts this step, and
        :meth:`load` only swaps the result in.  ``check`` (the schema
        check) runs on the same thread before anything read is used;
        whatever either raises, :meth:`load` raises on the loop thread, as
        if it had read itself.  Nothing here touches Celery's set or the
        collector's switch.
        """
        self.memory.prepare()  # the set's expires is what the built entries' stamps are counted for
        box: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                box.append((True, self._fetch(check)))
            except BaseException as exc:  # re-raised by load() on the loop thread
                box.append((False, exc))

        thread = threading.Thread(target=run, name="revstore-prefetch", daemon=True)
        self._prefetched = (thread, box)
        thread.start()

    @property
    def prefetching(self) -> bool:
        """:meth:`prefetch` started a read that :meth:`load` has not taken yet."""
        return self._prefetched is not None

    def load(self) -> int:
        """Load every unexpired revocation into memory (blocking; at start-up).

        From the local snapshot plus the changes since its marker when there
        is a fresh one (faster than the table for large sets: see
        docs/benchmarks.md), else from the table.  What :meth:`prefetch`
        read is used once, else this reads now.
        """
        fetched = self._take_prefetched() or self._fetch()
        count = self._install(fetched)
        big = len(fetched.rows.task_ids) >= RELEASE_AFTER
        del fetched  # the id list and the packed reply's pieces: freed before the release below
        if big:
            release_freed_memory()
        return count

    def _take_prefetched(self) -> Fetched | None:
        """What :meth:`prefetch` read, once it has (None: no prefetch); what it raised is raised here."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is None:
            return None
        thread, box = prefetched
        thread.join()
        succeeded, value = box.pop()
        if not succeeded:
            raise value
        return value  # type: ignore[no-any-return]

    def _install(self, fetched: Fetched) -> int:
        """Put what :meth:`_fetch` read in memory; runs on the loop thread."""
        started = fetched.started
        if fetched.changes is not None:
            local, changes = fetched.local, fetched.changes
            assert local is not None
            self.identity, self._trusted_at = changes.identity, fetched.db_now
            self._load_local(local, fetched.db_now, fetched.entries)
            self.memory.apply(changes.rows)
            count = self.memory.live_count()
            self.marker, self.loaded, self._needs_load = changes.marker, True, False
            if self.state is not None:
                self._journal(changes, local.marker, fetched.db_now, force=True)
            self.apply_pending()
            logger.info("revstore: loaded %d revocations in %.2fs from the local snapshot and %d changes "
                        "since from %s", count, time.monotonic() - started, len(changes.rows),
                        mask_url(self.store.url))
            return count
        rows, marker, db_now = fetched.rows, fetched.marker, fetched.db_now
        self.identity = fetched.identity
        self.memory.prepare()
        count = self.memory.load(rows, entries=fetched.entries)
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

    def _fetch(self, check: Callable[[SchemaState | None], None] | None = None) -> Fetched:
        """Everything :meth:`load` reads, and Celery's set entries built from it; touches no Celery structure.

        ``check`` is the schema check: it gets the schema's row where the
        table's read carried it (else None: it reads the row itself), and
        runs before anything read is used.
        """
        started = time.monotonic()
        local = self._read_local()
        if local is not None and local.age <= self.settings.snapshot_max_age:
            if check is not None:
                check(None)
                check = None
            db_now = epoch(self.store.db_now())
            self.clock.anchor(db_now)
            changes = self.store.changes_since(local.marker)
            why = distrust(DbIdentity.from_record(local.db_identity), changes.identity, local.marker, changes.clock)
            if why is not None:
                self._note_rewind(why, local.marker, "the local snapshot is not used; loading from the table")
            elif not changes.reload_required:
                return Fetched(started, local.base, changes.marker, db_now, changes.identity,
                               self._entries(local.base, local.base_time - db_now), local, changes)
        read = self.store.startup_read()
        if check is not None:
            check(None if read is None else read.schema)
        if read is None:  # the long way, whose errors say what is wrong
            identity = self.store.identity()
            rows, marker = self.store.load_active()
            db_now = epoch(self.store.db_now())
        else:
            identity, rows, marker, db_now = read.identity, read.rows, read.marker, read.db_now
        self.clock.anchor(db_now)
        return Fetched(started, rows, marker, db_now, identity, self._entries(rows, 0.0))

    def _entries(self, snapshot: Snapshot, shift: float) -> TaskEntries | None:
        lset = self.memory.revoked
        with gc_paused():  # a million tuples: no collection walks them while they are built
            return build_entries(lset, snapshot.task_ids, snapshot.task_remaining,
                                 time.monotonic() - lset.expires + shift)

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

    def _load_local(self, local: SnapshotRead, db_now: float, entries: TaskEntries | None = None) -> int:
        self.memory.prepare()
        count = self.memory.load(local.base, shift=local.base_time - db_now, entries=entries)
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
