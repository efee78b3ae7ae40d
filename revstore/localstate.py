"""A worker's files on its own host: the spool and the last-known snapshot.

The table is the source of truth, but it can be down.  Two files per worker
(named after its node name and the database it uses) keep what the worker
knows on its own disk, in ``revstore_state_dir``:

* the **spool** (``.spool``): every revoke the worker heard, appended with
  ``O_DSYNC`` before Celery's handler runs, so it is on disk before anything
  else happens to it.  Emptied once every write in it is committed;
  replayed at the next start otherwise.
* the **snapshot** (``.snapshot`` and ``.journal``): every live revocation and
  the marker it was in step with.  The base file is rewritten whole only
  after a full load; each sync appends the rows it pulled to the journal.
  A worker that cannot reach the database at start loads them instead of
  refusing to start.

Both are sequences of frames (magic, length, CRC-32, payload), so a torn or
corrupt piece is detected and skipped.  Times are kept on the database's
clock (seconds since the epoch, see :class:`DbClock`).

This module claims a worker's files in the folder (a lock per node name)
and tidies up after workers gone for good; the files themselves are
:mod:`revstore.spool` and :mod:`revstore.snapshot_files`, written in the
format of :mod:`revstore.frames`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import locks
from .config import Settings, mask_url
from .dbclock import DbClock, epoch
from .errors import ConfigurationError
from .frames import StateDamaged, frame
from .snapshot_files import HEARTBEAT, JOURNAL_MIN_COMPACT, SnapshotFiles, SnapshotRead
from .spool import SPOOL_MAX_BYTES, Spool
from .store import RevocationStore

#: what the worker's files are made of, each in its own module; named here for the sync layer and the tests
__all__ = ["HEARTBEAT", "JOURNAL_MIN_COMPACT", "SPOOL_MAX_BYTES", "DbClock", "LocalState", "SnapshotFiles",
           "SnapshotRead", "Spool", "StateDamaged", "epoch", "frame", "identity"]

logger = logging.getLogger("revstore")

#: What a node name's files are called after its stem (besides ``.lock``).
STATE_SUFFIXES = (".spool", ".spool.damaged", ".snapshot", ".snapshot.damaged", ".journal")


def identity(store: RevocationStore) -> str:
    """What a file belongs to: database, schema and prefix (never the password)."""
    url = store.backend.canonical_url(store.url.set(password=None))
    return f"{mask_url(url)}|{store.tables.schema or ''}|{store.tables.prefix}"


@dataclass
class LocalState:
    """One worker's claim on its files in the state folder."""

    folder: Path
    stem: Path
    lock_fd: int
    spool: Spool
    snapshot: SnapshotFiles
    #: spool records of workers of other node names that died on this host
    adopted: list[dict[str, Any]] = field(default_factory=list)
    #: their files, deleted once the adopted records are in this node's spool
    orphan_files: list[Path] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings, store: RevocationStore, nodename: str) -> LocalState | None:
        """Claim this node's files; None when there is no usable state folder (logged).

        A folder set explicitly that cannot be written is a ConfigurationError.
        """
        folder = settings.state_dir
        if folder is None:
            return None
        ident = identity(store)
        tag = hashlib.sha1(ident.encode()).hexdigest()[:10]
        name = locks.safe_name(nodename)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock_fd = None
            for stem_name in (f"{name}.{tag}", f"{name}-{os.getpid()}.{tag}"):
                lock_fd = locks.try_lock(folder / f"{stem_name}.lock")
                if lock_fd is not None:
                    break
            if lock_fd is None:
                raise OSError("every candidate file is locked by a live worker")
            stem = folder / stem_name
            state = cls(folder, stem, lock_fd, Spool(stem.with_name(stem.name + ".spool")),
                        SnapshotFiles(stem, ident))
            state.adopted = state._adopt_orphans(tag, settings.snapshot_max_age)
            state._forget_gone(settings.state_ttl)
        except OSError as exc:
            message = (f"revstore: state folder {folder} is not writable ({exc.strerror or exc}); set "
                       "revstore_state_dir (REVSTORE_STATE_DIR) to a folder this worker can write, or to 'none'")
            if settings.state_dir_explicit:
                raise ConfigurationError(message) from None
            logger.warning("%s; running without a local spool or snapshot", message)
            return None
        return state

    def _adopt_orphans(self, tag: str, max_age: float) -> list[dict[str, Any]]:
        """Take over the spools of dead workers of other node names (same database); drop their stale files."""
        adopted: list[dict[str, Any]] = []
        for lock_path in self.folder.glob(f"*.{tag}.lock"):
            stem = lock_path.with_suffix("")
            if stem == self.stem:
                continue
            fd = locks.try_lock(lock_path, create=False)
            if fd is None:
                continue  # alive
            try:
                spool = Spool(stem.with_name(stem.name + ".spool"))
                if spool.path.exists():
                    records = spool.recover()
                    spool.close()
                    adopted += records
                    if records:
                        logger.warning("revstore: replaying %d revokes spooled by a worker that died on this host (%s)",
                                       len(records), spool.path)
                snapshot = SnapshotFiles(stem, "")
                fresh = False
                try:
                    fresh = time.time() - snapshot.base_path.stat().st_mtime < max_age
                except FileNotFoundError:
                    pass
                leftovers = [spool.path, spool.path.with_name(spool.path.name + ".damaged")]
                if not fresh:
                    leftovers += [snapshot.base_path, snapshot.journal_path, lock_path]
                # the spool goes only once its records are in ours: see open_spool
                self.orphan_files.extend(leftovers)
            finally:
                locks.release(fd)
        return adopted

    def _forget_gone(self, ttl: float) -> None:
        """Remove the files of node names (of any database) that have not run for ``ttl`` seconds.

        Each node name that ever ran leaves its files behind (a fleet that
        renames its workers, a test run, a retired database).  Those of this
        database were adopted above; a spool of another database still
        holding revokes is kept, since no worker here could commit them.
        Leftover temporary files of this node (a crash during a rewrite)
        go too.
        """
        # one listing of the folder: it may hold thousands of node names, and a glob per name made start-up quadratic
        names = [entry.name for entry in os.scandir(self.folder)]
        temporary = [name for name in names if name.startswith(".") and name.endswith(".tmp")]
        for name in temporary:
            if name.startswith(f".{self.stem.name}."):
                (self.folder / name).unlink(missing_ok=True)
        present = set(names)
        now = time.time()
        for lock_name in names:
            if not lock_name.endswith(".lock"):
                continue
            lock_path = self.folder / lock_name
            stem = lock_path.with_suffix("")
            if stem == self.stem:
                continue
            files = [lock_path,
                     *(self.folder / (stem.name + suffix) for suffix in STATE_SUFFIXES if stem.name + suffix in present),
                     *(self.folder / name for name in temporary if name.startswith(f".{stem.name}."))]
            try:
                newest = max(path.stat().st_mtime for path in files)
            except (ValueError, FileNotFoundError):
                continue
            if now - newest < ttl:
                continue
            spool = stem.with_name(stem.name + ".spool")
            if spool.exists() and spool.stat().st_size:
                logger.warning("revstore: %s holds revokes of a database no worker on this host has used for %.0f "
                               "days; kept (start a worker of that database to commit them, or delete it)",
                               spool, (now - newest) / 86400)
                continue
            fd = locks.try_lock(lock_path, create=False)
            if fd is None:
                continue  # alive after all
            try:
                for path in files:
                    path.unlink(missing_ok=True)
            finally:
                locks.release(fd)

    def open_spool(self) -> list[dict[str, Any]]:
        """Read this node's spool, append the adopted records to it, delete the orphans' files."""
        records = self.spool.recover()
        for record in self.adopted:
            if self.spool.append(record) is not None:
                records.append(record)
        for path in self.orphan_files:
            path.unlink(missing_ok=True)
        self.adopted, self.orphan_files = [], []
        return records

    def close(self) -> None:
        self.spool.close()
        self.snapshot.close()
        locks.release(self.lock_fd)
