"""The local snapshot against a model of the table (issue 21): right by construction, crash where it may.

Random sequences of table writes, full loads (their base written at once or
later), pulls, compactions and crashes run against the real snapshot files.
A crash may fall inside any file write: before it, with a torn temporary
file left behind, between the base and the journal, or tearing the
journal's last record.  After each crash the files are read back the way a
restarting worker reads them, and what they hold must be exactly the table
as of the marker they claim, never behind what was durably written.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revstore import frames
from revstore.localstate import SnapshotFiles
from revstore.store import Revocation, Snapshot, Target

KEYS = [f"id-{i}" for i in range(6)]


class Crash(Exception):
    """The process died here."""


@dataclass
class Table:
    """The revocations table as a log of versioned writes."""

    log: list[tuple[int, str, bool]] = field(default_factory=list)

    @property
    def clock(self) -> int:
        return len(self.log)

    def write(self, key: str, active: bool) -> None:
        self.log.append((self.clock + 1, key, active))

    def state(self, at: int) -> dict[str, tuple[bool, int]]:
        rows: dict[str, tuple[bool, int]] = {}
        for version, key, active in self.log[:at]:
            rows[key] = (active, version)
        return rows

    def live(self, at: int) -> set[str]:
        return {key for key, (active, _) in self.state(at).items() if active}

    def load(self) -> tuple[Snapshot, int]:
        ids = sorted(self.live(self.clock))
        return Snapshot(ids, array("d", [float("inf")] * len(ids)), []), self.clock

    def changes_since(self, marker: int) -> tuple[list[Revocation], int]:
        rows = [Revocation(Target.task(key), False, None, None, None, None, None, version, active, None)
                for key, (active, version) in self.state(self.clock).items() if version > marker]
        return sorted(rows, key=lambda r: r.version), self.clock


@contextmanager
def crash_inside_file_write(at: int | None, torn: bool) -> Iterator[None]:
    """Die during whole-file write number ``at`` (0-based) of the block: before it, or with its temporary file torn."""
    real = frames.write_atomically
    calls = iter(range(1_000))

    def write(path: Path, *parts: bytes) -> None:
        if next(calls) == at:
            if torn:
                data = b"".join(parts)
                path.with_name(f".{path.name}.torn.tmp").write_bytes(data[: len(data) // 2])
            raise Crash
        real(path, *parts)

    frames.write_atomically = write  # type: ignore[assignment]
    try:
        yield
    finally:
        frames.write_atomically = real  # type: ignore[assignment]


def read_back(stem: Path) -> tuple[set[str], int, SnapshotFiles] | None:
    """What a restarting worker gets from the files: live ids, marker, and the files to go on with."""
    files = SnapshotFiles(stem, "db")
    read = files.read()
    if read is None:
        return None
    live = set(read.base.task_ids)
    for target, _, active in read.changes:
        (live.add if active else live.discard)(target.value)
    return live, read.marker, files


OPS = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(KEYS), st.booleans()),
    st.tuples(st.just("load"), st.booleans()),  # base written at once, or held for later
    st.tuples(st.just("write_held_base")),
    st.tuples(st.just("pull")),
    st.tuples(st.just("compact")),
    # crash inside the next whole-file write (0: base, 1: journal) or tear the journal's tail
    st.tuples(st.just("crash"), st.sampled_from([None, 0, 1]), st.booleans(), st.integers(1, 40)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=40))
def test_the_snapshot_read_back_is_always_the_table_as_of_its_marker(ops: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        stem = Path(folder) / "worker"
        table = Table()
        files = SnapshotFiles(stem, "db")
        marker: int | None = None  # the worker's marker; None: not loaded yet
        held: tuple[Snapshot, int] | None = None
        durable = -1  # the marker that the files must reach at least after a crash
        last_append_end: int | None = None  # size of the journal after the last append, if that was the last write
        for op in ops:
            if op[0] == "write":
                table.write(op[1], op[2])
            elif op[0] == "load":
                snapshot, marker = table.load()
                if op[1]:
                    files.write_base(snapshot, marker, 0.0)
                    durable, last_append_end = max(durable, files.marker), None
                else:
                    held = (snapshot, marker)
            elif op[0] == "write_held_base" and held is not None:
                if files.write_base(held[0], held[1], 0.0):
                    last_append_end = None
                durable, held = max(durable, files.marker), None
            elif op[0] == "pull" and marker is not None:
                rows, reached = table.changes_since(marker)
                if files.append(rows, reached, 0.0, since=marker, force=True):
                    durable, last_append_end = reached, files.journal_path.stat().st_size
                marker = reached
            elif op[0] == "compact" and files.generation:
                snapshot, at = table.load()
                if files.write_base(snapshot, at, 0.0):
                    last_append_end = None
                durable = max(durable, files.marker)
            elif op[0] == "crash":
                _, inside, torn, cut = op
                if inside is not None and (held is not None or files.generation):
                    # the crash comes while the held base (or a compaction) is being written
                    snapshot, at = held if held is not None else table.load()
                    try:
                        with crash_inside_file_write(inside, torn):
                            files.write_base(snapshot, at, 0.0)
                        durable = max(durable, at)  # it had fewer writes than that: it completed
                    except Crash:
                        pass
                elif last_append_end is not None and cut:
                    # the last append was torn: its record is lost, nothing before it
                    with open(files.journal_path, "r+b") as fh:
                        fh.truncate(max(0, last_append_end - cut))
                files.close()
                back = read_back(stem)
                if back is None:
                    assert durable < 0, "a durable snapshot was lost"
                    files, marker, held, last_append_end = SnapshotFiles(stem, "db"), None, None, None
                    continue
                live, at, files = back
                assert live == table.live(at), f"the files claim marker {at} but hold something else"
                if not (inside is None and last_append_end is not None and cut):
                    assert at >= durable, f"went back from {durable} to {at}"
                durable = at
                marker, held, last_append_end = at, None, None
        files.close()
        back = read_back(stem)
        if back is not None:
            live, at, _ = back
            assert live == table.live(at)
            assert at >= durable
