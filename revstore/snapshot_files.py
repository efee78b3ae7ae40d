"""The last-known snapshot: a worker's copy of the table as of a marker, as a base file and a journal.

A worker that cannot reach the database at start loads it instead of
refusing to start, and one that can pulls only the changes since its
marker.  Its own module because its correctness argument (see
:class:`SnapshotFiles`) is about these two files alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import frames as _frames
from . import locks
from .dbclock import epoch
from .frames import HEADER, StateDamaged, frame, framed, read_frames
from .records import Revocation, Snapshot, Target

#: The journal is folded into a new base once it is this large, or a quarter
#: of the base, whichever is more.
JOURNAL_MIN_COMPACT = 1024 * 1024

#: With nothing changing, the journal still records "in step at marker M"
#: this often, so the snapshot's age says how stale it is.
HEARTBEAT = 60.0


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
            pos += HEADER.size + len(payload)
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
        _frames.write_atomically(self.base_path, *parts)
        # a crash here leaves the new base with the old journal, whose records it ignores
        _frames.write_atomically(self.journal_path, journal)
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
