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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
import threading
import time
import uuid
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import locks
from .config import Settings, mask_url
from .errors import ConfigurationError, RevstoreError
from .store import Revocation, RevocationStore, Snapshot, Target

logger = logging.getLogger("revstore")

MAGIC = b"RVS\x01"
_HEADER = struct.Struct(">4sII")  # magic, payload length, CRC-32 of the payload

#: The spool refuses appends beyond this (a worker hearing revokes through a
#: week-long outage); what it refuses stays effective in memory only.
SPOOL_MAX_BYTES = 256 * 1024 * 1024

#: The journal is folded into a new base once it is this large, or a quarter
#: of the base, whichever is more.
JOURNAL_MIN_COMPACT = 1024 * 1024

#: What a node name's files are called after its stem (besides ``.lock``).
STATE_SUFFIXES = (".spool", ".spool.damaged", ".snapshot", ".snapshot.damaged", ".journal")

#: With nothing changing, the journal still records "in step at marker M"
#: this often, so the snapshot's age says how stale it is.
HEARTBEAT = 60.0


class StateDamaged(RevstoreError):
    """A local file cannot be read back."""


def frame(payload: bytes) -> bytes:
    return b"".join(framed(payload))


def framed(payload: bytes) -> tuple[bytes, bytes]:
    """A frame as header and payload, to be written without copying a large payload into one buffer."""
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)), payload


def read_frames(data: bytes, stop_at_damage: bool = False) -> tuple[list[bytes], int]:
    """The intact frames in ``data`` and how many bytes were not part of one.

    After a damaged stretch the reader skips to the next intact frame,
    unless ``stop_at_damage`` (when a frame only makes sense after all the
    ones before it).
    """
    frames: list[bytes] = []
    pos, damaged, size = 0, 0, len(data)
    while pos < size:
        if pos + _HEADER.size <= size:
            magic, length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if magic == MAGIC and end <= size:
                payload = data[pos + _HEADER.size : end]
                if zlib.crc32(payload) == crc:
                    frames.append(payload)
                    pos = end
                    continue
        if stop_at_damage:
            return frames, size - pos
        following = data.find(MAGIC, pos + 1)
        following = size if following < 0 else following
        damaged += following - pos
        pos = following
    return frames, damaged


def epoch(value: datetime) -> float:
    """A database timestamp as epoch seconds; naive ones are UTC (the store writes UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


class DbClock:
    """The database's clock, estimated between contacts.

    Anchored at each contact (the server's ``now()``) and run forward on
    this process's monotonic clock, so a jump of the host's wall clock does
    not move it.  Across a restart only the wall clock links two processes:
    :meth:`resume` assumes the host's clock ran at the database's pace since
    the file was written (skew is fine, a jump is not).  Never anchored, it
    is the host's wall clock.
    """

    def __init__(self) -> None:
        self._db: float | None = None
        self._mono = 0.0
        self._offset = 0.0  # database minus host wall clock at the last anchor

    def anchor(self, db_now: datetime | float) -> None:
        value = db_now if isinstance(db_now, float) else epoch(db_now)
        self._db, self._mono, self._offset = value, time.monotonic(), value - time.time()

    def resume(self, db_time: float, wall_time: float) -> None:
        """Continue from a file written at ``wall_time`` (host) = ``db_time`` (database)."""
        self._db = db_time + (time.time() - wall_time)
        self._mono, self._offset = time.monotonic(), db_time - wall_time

    @property
    def anchored(self) -> bool:
        return self._db is not None

    def now(self) -> float:
        if self._db is None:
            return time.time()
        return self._db + (time.monotonic() - self._mono)


def identity(store: RevocationStore) -> str:
    """What a file belongs to: database, schema and prefix (never the password)."""
    url = store.backend.canonical_url(store.url.set(password=None))
    return f"{mask_url(url)}|{store.tables.schema or ''}|{store.tables.prefix}"


# --------------------------------------------------------------------------


class Spool:
    """Revokes heard but not yet committed, one frame each, on disk before use."""

    def __init__(self, path: Path, max_bytes: int = SPOOL_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        #: appends so far (records read back at start count too)
        self.seq = 0
        self.size = 0

    def recover(self) -> list[dict[str, Any]]:
        """Read what an earlier run left; a damaged file keeps every readable record."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        frames, damaged = read_frames(data)
        records = []
        for payload in frames:
            try:
                records.append(json.loads(payload))
            except ValueError:
                damaged += len(payload)
        if damaged:
            kept = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, kept)
            _write_atomically(self.path, b"".join(frame(p) for p in frames))
            logger.error("revstore: spool %s is damaged (%d bytes unreadable); replaying the %d revokes it still "
                         "holds; the damaged file is kept as %s", self.path, damaged, len(records), kept)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size
        self.seq = len(records)
        return records

    def append(self, record: dict[str, Any]) -> int | None:
        """Write one record through to disk; its sequence number, or None if it could not be kept."""
        data = frame(json.dumps(record, separators=(",", ":")).encode())
        with self._lock:
            if self._fd is None:
                return None
            if self.size + len(data) > self.max_bytes:
                return None
            try:
                os.write(self._fd, data)
            except OSError as exc:
                logger.error("revstore: cannot write the spool %s: %s", self.path, exc)
                return None
            self.size += len(data)
            self.seq += 1
            return self.seq

    def clear_if(self, seq: int) -> bool:
        """Empty the file if record ``seq`` was the last appended (all are committed)."""
        with self._lock:
            if self._fd is None or self.seq != seq or not self.size:
                return False
            os.ftruncate(self._fd, 0)
            self.size = 0
            return True

    def close(self) -> None:
        with self._lock:
            locks.release(self._fd)
            self._fd = None


@dataclass
class SnapshotRead:
    """A snapshot as read back, equal to the table as of ``marker``.

    The base's task lifetimes are kept as written (seconds left at
    ``base_time`` on the database clock), so reading a million of them costs
    no per-id arithmetic; the journal's and the other kinds' are deadlines.
    """

    #: task ids and their lifetimes at ``base_time`` (``inf``: never); others' last field is a deadline
    base: Snapshot
    #: the journal's rows after the base: ``(target, deadline or None, active)``
    changes: list[tuple[Target, float | None, bool]]
    marker: int
    #: when it was last in step with the table, on the database's and the host's clock
    db_time: float
    wall_time: float
    #: the database clock when the base's lifetimes were counted
    base_time: float = 0.0
    #: what the database said it was when the base was written (see revstore.identity); None: unknown
    db_identity: dict[str, Any] | None = None
    #: bytes of the journal that could not be read or did not follow on (a torn last record)
    damaged: int = 0

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.wall_time)

    def revocations(self, now: float) -> Iterator[Revocation]:
        """The journal's rows as the store hands them, lifetimes counted from ``now``."""
        for target, deadline, active in self.changes:
            yield Revocation(target, False, None, None, None, None, None, self.marker, active,
                             None if deadline is None else deadline - now)


class SnapshotFiles:
    """The last-known snapshot: a base file and a journal of the syncs since.

    Right by construction, whatever the caller's order and wherever a crash
    falls: every journal record says which marker its pull started from
    (``since``) and is used only if that is at or below the marker reached so
    far, so base + journal always equal the table as of the marker read back
    (the rows of a pull are the rows' state at its end, so a pull that
    started before the base's marker only repeats what the base holds or
    brings it forward).  A base write keeps the journaled pulls that reach
    past it; pulls made before there is any base are held in memory and
    written after it.  The journal is replaced by rename after the base, so
    a crash between the two leaves an older but consistent snapshot.
    """

    def __init__(self, stem: Path, identity_: str) -> None:
        self.base_path = stem.with_name(stem.name + ".snapshot")
        self.journal_path = stem.with_name(stem.name + ".journal")
        self.identity = identity_
        #: what the database says it is, recorded in the base (set by the sync layer)
        self.db_identity: dict[str, Any] | None = None
        self.generation = ""
        #: the marker base + journal on disk are in step with, and the base's (-1: no base)
        self.marker = self.base_marker = -1
        self.base_bytes = 0
        self.journal_bytes = 0
        #: pulls recorded before there was a base, written after it
        self._held: list[dict[str, Any]] = []
        self._journal_fd: int | None = None
        self._last_write = 0.0

    # ------------------------------------------------------------ read

    def read(self) -> SnapshotRead | None:
        """The snapshot, None if there is none; raise StateDamaged if the base cannot be read."""
        try:
            data = self.base_path.read_bytes()
        except FileNotFoundError:
            return None
        frames, damaged = read_frames(data, stop_at_damage=True)
        if damaged or len(frames) != 3:
            raise StateDamaged(f"revstore: snapshot {self.base_path} is damaged ({damaged} bytes unreadable)")
        try:
            head = json.loads(frames[0])
            ids = frames[1].decode().split("\x00") if head["count"] else []
            lifetimes = array("d", frames[2])
            if head["byteorder"] != sys.byteorder:
                lifetimes.byteswap()
            if len(ids) != head["count"] or len(lifetimes) != len(ids) or head["identity"] != self.identity:
                raise ValueError("counts or identity do not match")
            others = [(k, h, v, d) for k, h, v, d in head["others"]]
            # format 1 (0.2.0) kept deadlines, and journal records that cannot be chained
            base_time = float(head["db_time"]) if head["format"] >= 2 else 0.0
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise StateDamaged(f"revstore: snapshot {self.base_path} is damaged ({exc})") from None
        self.generation, self.base_bytes = head["generation"], len(data)
        self.marker = self.base_marker = int(head["marker"])
        read = SnapshotRead(Snapshot(ids, lifetimes, others), [], self.marker, float(head["db_time"]),
                            float(head["wall_time"]), base_time, head.get("db"))
        try:
            journal = self.journal_path.read_bytes()
        except FileNotFoundError:
            journal = b""
        good = 0
        for record, end in self._chain(journal, self.marker):
            read.changes += [(Target(k, v, h), d, bool(a)) for k, h, v, d, a in record["rows"]]
            read.marker = max(read.marker, int(record["marker"]))
            read.db_time, read.wall_time = float(record["db_time"]), float(record["wall_time"])
            good = end
        self.marker = read.marker
        read.damaged = len(journal) - good
        if read.damaged:
            # later records must follow the last good one, not what could not be used
            with open(self.journal_path, "r+b") as fh:
                fh.truncate(good)
        self.journal_bytes = good
        return read

    def _chain(self, journal: bytes, marker: int) -> Iterator[tuple[dict[str, Any], int]]:
        """The journal's usable records after a base at ``marker``, each with where it ends.

        A record only makes sense after every one before it: reading stops
        at damage, at a record of another base, and at a gap.
        """
        pos = 0
        for payload in read_frames(journal, stop_at_damage=True)[0]:
            try:
                record = json.loads(payload)
                if record["generation"] != self.generation or int(record["since"]) > marker:
                    return  # from before the base was last rewritten, or leaving out what changed between
                marker = max(marker, int(record["marker"]))
                record["rows"] = list(record["rows"])
            except (ValueError, KeyError, TypeError):
                return
            pos += _HEADER.size + len(payload)
            yield record, pos

    # ----------------------------------------------------------- write

    def write_base(self, snapshot: Snapshot, marker: int, db_now: float, *, reset: bool = False) -> bool:
        """Replace the base with a full load at ``marker`` (lifetimes counted from ``db_now``).

        Journaled (or held) pulls that reach past ``marker`` are carried
        over to the new journal, and a load older than what the files hold
        is not written: the snapshot never goes back.  ``reset`` (the
        database was replaced or went back in time, so markers of before
        mean nothing) starts over from this load alone.
        """
        if reset:
            self.generation, self._held, self.marker, self.base_marker = "", [], -1, -1
        elif marker < self.marker:
            return False
        others = [[k, h, v, None if r is None else db_now + r] for k, h, v, r in snapshot.others]
        generation = uuid.uuid4().hex
        head = {
            "format": 2, "identity": self.identity, "generation": generation, "marker": marker,
            "db_time": db_now, "wall_time": time.time(), "count": len(snapshot.task_ids),
            "byteorder": sys.byteorder, "others": others, "db": self.db_identity,
        }
        lifetimes = snapshot.task_remaining
        parts = (
            *framed(json.dumps(head, separators=(",", ":")).encode()),
            *framed("\x00".join(snapshot.task_ids).encode()),
            *framed((lifetimes if isinstance(lifetimes, array) else array("d", lifetimes)).tobytes()),
        )
        tail, reached = [], marker
        for record in self._recorded():
            if int(record["marker"]) > reached and int(record["since"]) <= reached:
                tail.append({**record, "generation": generation})
                reached = int(record["marker"])
        journal = b"".join(frame(json.dumps(r, separators=(",", ":")).encode()) for r in tail)
        _write_atomically(self.base_path, *parts)
        # a crash here leaves the new base with the old journal, whose records it ignores
        _write_atomically(self.journal_path, journal)
        self.generation, self.base_bytes, self._held = generation, sum(map(len, parts)), []
        self.marker, self.base_marker = reached, marker
        self._open_journal()
        self._last_write = time.monotonic()
        return True

    def _recorded(self) -> list[dict[str, Any]]:
        """Every pull recorded since the current base: the journal's, then the held ones."""
        records: list[dict[str, Any]] = []
        if self.generation:
            try:
                journal = self.journal_path.read_bytes()
            except FileNotFoundError:
                journal = b""
            records = [record for record, _ in self._chain(journal, self.base_marker)]
        return records + self._held

    def append(self, rows: Iterable[Revocation], marker: int, db_now: float, *, since: int,
               force: bool = False) -> bool:
        """Record a sync that pulled ``rows`` (the changes after ``since``) and reached ``marker``.

        With no rows, only every HEARTBEAT seconds (so the age stays true).
        Before there is a base the record is held, and written after it.
        """
        items = [[r.target.kind, r.target.header, r.target.value,
                  None if r.expires_at is None else epoch(r.expires_at), r.active] for r in rows]
        if not items and not force and time.monotonic() - self._last_write < HEARTBEAT:
            return False
        record = {"generation": self.generation, "since": since, "marker": marker, "db_time": db_now,
                  "wall_time": time.time(), "rows": items}
        if not self.generation:
            self._held.append(record)  # written after the base
            return False
        if since > self.marker:
            # a gap (the caller skipped a pull): nothing after it could be used,
            # so the snapshot stays at its marker until the next base
            return False
        if self._journal_fd is None:
            self._open_journal()
        data = frame(json.dumps(record, separators=(",", ":")).encode())
        os.write(self._journal_fd, data)  # type: ignore[arg-type]
        self.journal_bytes += len(data)
        self.marker = max(self.marker, marker)
        self._last_write = time.monotonic()
        return True

    def needs_compaction(self) -> bool:
        return self.journal_bytes > max(JOURNAL_MIN_COMPACT, self.base_bytes // 4)

    def _open_journal(self) -> None:
        locks.release(self._journal_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC | os.O_CLOEXEC
        self._journal_fd = os.open(self.journal_path, flags, 0o600)
        self.journal_bytes = os.fstat(self._journal_fd).st_size

    def set_aside(self) -> Path:
        """Move a damaged base away (one copy kept) so the next full load starts clean."""
        kept = self.base_path.with_name(self.base_path.name + ".damaged")
        os.replace(self.base_path, kept)
        return kept

    def close(self) -> None:
        locks.release(self._journal_fd)
        self._journal_fd = None


def _write_atomically(path: Path, *parts: bytes) -> None:
    """Write a whole file (the concatenation of ``parts``) so that a crash leaves either the old or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------


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
