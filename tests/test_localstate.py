"""The spool and snapshot files (issue 16): torn, truncated or corrupt, they give back what is readable."""

from __future__ import annotations

import json
import os
import time
from array import array
from datetime import datetime, timezone
from pathlib import Path

import pytest

from revstore import locks
from revstore.config import load_settings
from revstore.localstate import LocalState, SnapshotFiles, Spool, StateDamaged, frame
from revstore.store import Revocation, RevocationStore, Snapshot, Target


def records(n: int) -> list[dict]:
    return [{"t": [["task", "", f"id-{i}"]], "heard": 1.0 + i} for i in range(n)]


def test_a_spool_cut_at_any_byte_keeps_every_whole_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "w.spool")
    spool.recover()
    for record in records(3):
        assert spool.append(record) is not None
    spool.close()
    data = (tmp_path / "w.spool").read_bytes()
    ends = [len(frame(json.dumps(r, separators=(",", ":")).encode())) for r in records(3)]
    bounds = [sum(ends[: i + 1]) for i in range(3)]
    for cut in sorted({*range(0, len(data) + 1, 5), *bounds, *(b - 1 for b in bounds), *(b + 1 for b in bounds)}):
        (tmp_path / "cut.spool").write_bytes(data[:cut])
        back = Spool(tmp_path / "cut.spool").recover()
        whole = sum(1 for i in range(3) if sum(ends[: i + 1]) <= cut)
        assert back == records(3)[:whole]


def test_garbage_inside_a_spool_loses_only_the_garbage(tmp_path: Path) -> None:
    path = tmp_path / "w.spool"
    good = [frame(json.dumps(r).encode()) for r in records(3)]
    flipped = bytearray(good[1])
    flipped[-2] ^= 0x01
    path.write_bytes(good[0] + b"junk" + bytes(flipped) + good[2])
    spool = Spool(path)
    assert spool.recover() == [records(3)[0], records(3)[2]]
    assert path.with_name("w.spool.damaged").exists()
    assert spool.append(records(4)[3]) == 3  # appends follow the clean copy
    spool.close()
    assert Spool(path).recover() == [records(3)[0], records(3)[2], records(4)[3]]


def test_the_spool_is_emptied_only_when_its_last_record_is_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "w.spool")
    spool.recover()
    first = spool.append(records(1)[0])
    second = spool.append(records(2)[1])
    assert not spool.clear_if(first)  # the second is not committed yet
    assert spool.clear_if(second) and spool.size == 0
    assert Spool(tmp_path / "w.spool").recover() == []


def _row(task_id: str, active: bool, expires_at: datetime | None) -> Revocation:
    return Revocation(Target.task(task_id), False, None, None, None, None, expires_at, 9, active, None)


def test_snapshot_base_and_journal_round_trip_with_deadlines(tmp_path: Path) -> None:
    files = SnapshotFiles(tmp_path / "w", "db-a")
    base = Snapshot(["a", "b\nnewline", "never"], array("d", [10.0, 20.0, float("inf")]),
                    [("stamp", "batch", '"x"', 30.0), ("root", "", "r1", None)])
    files.write_base(base, marker=5, db_now=1000.0)
    later = datetime.fromtimestamp(1500.0, timezone.utc)
    files.append([_row("c", True, later), _row("a", False, later)], marker=7, db_now=1100.0, since=5)
    read = SnapshotFiles(tmp_path / "w", "db-a").read()
    assert read is not None and read.marker == 7 and read.db_time == 1100.0 and not read.damaged
    assert read.base.task_ids == ["a", "b\nnewline", "never"]
    assert read.base_time == 1000.0 and list(read.base.task_remaining) == [10.0, 20.0, float("inf")]
    assert read.base.others == [("stamp", "batch", '"x"', 1030.0), ("root", "", "r1", None)]
    assert [(t.value, d, a) for t, d, a in read.changes] == [("c", 1500.0, True), ("a", 1500.0, False)]
    assert [r.remaining for r in read.revocations(1400.0)] == [100.0, 100.0]
    with pytest.raises(StateDamaged):  # never someone else's database (the file names differ too)
        SnapshotFiles(tmp_path / "w", "another database").read()


def test_a_torn_journal_is_cut_back_to_its_last_good_record(tmp_path: Path) -> None:
    files = SnapshotFiles(tmp_path / "w", "db")
    files.write_base(Snapshot(["a"], array("d", [10.0]), []), marker=1, db_now=0.0)
    files.append([_row("b", True, None)], marker=2, db_now=1.0, since=1)
    with open(files.journal_path, "ab") as fh:
        fh.write(frame(b'{"half": ')[:-3])
    again = SnapshotFiles(tmp_path / "w", "db")
    read = again.read()
    assert read is not None and read.marker == 2 and read.damaged > 0
    again.append([_row("c", True, None)], marker=3, db_now=2.0, since=2)
    read = SnapshotFiles(tmp_path / "w", "db").read()
    assert read is not None and read.marker == 3 and [t.value for t, _, _ in read.changes] == ["b", "c"]


def test_any_damage_to_the_base_is_one_clear_error(tmp_path: Path) -> None:
    files = SnapshotFiles(tmp_path / "w", "db")
    files.write_base(Snapshot([f"id-{i}" for i in range(50)], array("d", range(50)), []), marker=1, db_now=0.0)
    data = files.base_path.read_bytes()
    for pos in range(0, len(data), 7):
        damaged = bytearray(data)
        damaged[pos] ^= 0x40
        files.base_path.write_bytes(bytes(damaged))
        with pytest.raises(StateDamaged, match="is damaged"):
            SnapshotFiles(tmp_path / "w", "db").read()
    files.base_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateDamaged, match="is damaged"):
        SnapshotFiles(tmp_path / "w", "db").read()


def _aged(paths: list[Path], days: float) -> None:
    for path in paths:
        path.touch()
        when = time.time() - days * 86400
        os.utime(path, (when, when))


def test_files_of_node_names_gone_for_the_state_ttl_are_removed(tmp_path: Path) -> None:
    settings = load_settings({"revstore_url": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                              "revstore_state_dir": str(tmp_path / "state"), "revstore_state_ttl": 3 * 86400})
    folder = tmp_path / "state"
    folder.mkdir()
    gone = [folder / f"old@host.0123456789{suffix}" for suffix in (".lock", ".snapshot", ".journal", ".spool")]
    recent = [folder / f"recent@host.0123456789{suffix}" for suffix in (".lock", ".snapshot")]
    pending = [folder / f"pending@host.0123456789{suffix}" for suffix in (".lock", ".spool")]
    live = [folder / f"live@host.0123456789{suffix}" for suffix in (".lock", ".snapshot")]
    _aged(gone, 4)
    _aged(recent, 2)
    _aged(live, 30)
    pending[1].write_bytes(frame(b'{"ids": "x"}'))  # another database's uncommitted revoke
    _aged(pending, 30)
    holder = locks.try_lock(live[0])
    try:
        state = LocalState.open(settings, RevocationStore(settings.url), "w@host")
        assert state is not None
        state.close()
    finally:
        locks.release(holder)
    assert not any(path.exists() for path in gone)
    assert all(path.exists() for path in recent + pending + live)
