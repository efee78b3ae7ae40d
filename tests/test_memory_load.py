"""A table load into Celery's own ``LimitedSet``: every behaviour Celery relies on stays (no database needed).

The load builds the set's dict and heap in one pass, away from the set
(possibly on a helper thread), then swaps them in; these check that the
result is a set Celery cannot tell from one filled by ``add``.
"""

from __future__ import annotations

import heapq
import pickle
import time
from array import array
from typing import Any

import pytest
from celery.utils.collections import LimitedSet

from revstore.memory import WorkerMemory
from revstore.set_entries import LOADED_SEQ, EntryBuilder, _triples, build_entries
from revstore.records import Snapshot

INF = float("inf")


def _memory(lset: LimitedSet | None = None) -> WorkerMemory:
    memory = WorkerMemory(LimitedSet(maxlen=50_000, expires=100) if lset is None else lset, {})
    memory.prepare()
    return memory


def _snapshot(pairs: list[tuple[str, float]]) -> Snapshot:
    return Snapshot([i for i, _ in pairs], array("d", [r for _, r in pairs]), [])


def _big(n: int) -> Snapshot:
    return _snapshot([(f"id-{i:07d}", 10.0 + i % 50) for i in range(n)])


def test_loaded_ids_are_members_with_the_shared_sequence_number() -> None:
    memory = _memory()
    memory.load(_big(5000))
    revoked = memory.revoked
    assert len(revoked) == 5000 and "id-0000000" in revoked and "id-0004999" in revoked and "other" not in revoked
    if _triples(LimitedSet):
        assert {entry[1] for entry in revoked._data.values()} == {LOADED_SEQ}
        assert sorted(revoked._heap) == sorted(revoked._data.values())
        assert revoked._heap[0] == min(revoked._heap)


def test_expiry_follows_the_table_lifetime_and_never_means_never() -> None:
    memory = _memory()
    memory.load(_snapshot([("gone", -1.0), ("soon", 5.0), ("later", 50.0), ("never", INF)]
                          + [(f"pad-{i}", 30.0) for i in range(2000)]))
    memory.purge()
    assert "gone" not in memory.revoked and "soon" in memory.revoked
    memory.revoked.purge(time.monotonic() + 10)
    assert "soon" not in memory.revoked and "later" in memory.revoked
    memory.revoked.purge(time.monotonic() + 10 ** 9)
    assert list(memory.revoked) == ["never"]


def test_celery_add_discard_pop_and_iteration_keep_working_after_a_load() -> None:
    memory = _memory()
    memory.load(_big(3000))
    revoked = memory.revoked
    revoked.add("heard-later")
    revoked.discard("id-0000007")
    assert "heard-later" in revoked and "id-0000007" not in revoked and len(revoked) == 3000
    ordered = list(revoked)
    assert ordered[-1] == "heard-later" and len(ordered) == 3000  # oldest first, the new one last
    assert revoked.pop() == ordered[0]
    revoked.add("id-0000001")  # re-adding refreshes: its old heap entry is stale now
    revoked.purge(time.monotonic() + 59)  # every loaded id expired (lifetimes up to 59 s), the re-added ones not
    assert set(revoked) == {"heard-later", "id-0000001"}


def test_what_the_set_held_before_the_load_stays_and_the_table_wins_for_the_same_id() -> None:
    memory = _memory()
    memory.revoked.add("from-mingle")  # merged from a peer before the load
    memory.revoked.add("id-0000003", time.monotonic() - 90)  # a stale stamp: the table's lifetime replaces it
    memory.load(_big(2000))
    revoked = memory.revoked
    assert "from-mingle" in revoked and len(revoked) == 2001
    revoked.purge(time.monotonic() + 11)  # past the old stamp's expiry (10 s), within the table's (13 s)
    assert "id-0000003" in revoked and "id-0000000" not in revoked  # 10 s
    assert min(revoked._heap) == revoked._heap[0]


def test_a_loaded_set_pickles_as_a_statedb_does_and_merges_into_another_set() -> None:
    memory = _memory()
    memory.load(_big(1500))
    copy = pickle.loads(pickle.dumps(memory.revoked))
    assert copy == memory.revoked and len(copy) == 1500
    other = LimitedSet(maxlen=0, expires=100)
    other.add("own")
    other.update(memory.revoked)
    assert len(other) == 1501 and "id-0001499" in other


def test_a_set_of_another_layout_is_filled_with_its_own_add() -> None:
    class PairSet(LimitedSet):  # Celery 5.3-5.6 keep (stamp, item) pairs
        def add(self, item: Any, now: Any = None) -> None:
            entry = (time.monotonic() if now is None else now, item)
            self._data[item] = entry
            heapq.heappush(self._heap, entry)

    lset = PairSet(maxlen=0, expires=100)
    assert build_entries(lset, ["a"], array("d", [1.0]), 0.0) is None
    memory = _memory(lset)
    memory.load(_big(1200))
    assert len(lset) == 1200 and all(len(entry) == 2 for entry in lset._data.values())


@pytest.mark.parametrize("expires", [100.0, 250.0])
def test_entries_built_for_another_expiry_are_rebuilt(expires: float) -> None:
    memory = _memory()
    snapshot = _big(1000)
    entries = build_entries(LimitedSet(maxlen=0, expires=expires), snapshot.task_ids, snapshot.task_remaining,
                            time.monotonic() - expires)
    memory.load(snapshot, entries=entries)
    memory.revoked.purge(time.monotonic() + 9)
    assert len(memory.revoked) == 1000  # stamps fit the set's own expires (100 s), whichever were passed


def test_entries_built_piece_by_piece_equal_those_built_whole_and_digests_are_rebuilt() -> None:
    snapshot = _big(3000)
    base = time.monotonic() - 100
    lset = LimitedSet(maxlen=0, expires=100)
    builder = EntryBuilder(lset, base)
    for start in range(0, 3000, 1000):
        builder.add(snapshot.task_ids[start:start + 1000], snapshot.task_remaining[start:start + 1000])
    whole = build_entries(lset, snapshot.task_ids, snapshot.task_remaining, base)
    pieces = builder.finish(snapshot)
    assert pieces is not None and whole is not None and pieces.data == whole.data
    # a piece holding an id stored by digest: the load replaces it in the snapshot afterwards
    builder = EntryBuilder(lset, base)
    builder.add(["revstore-sha256:ab", *snapshot.task_ids[1:1000]], snapshot.task_remaining[:1000])
    snapshot.task_ids[0] = "the-long-id-itself"
    built = builder.finish(Snapshot(snapshot.task_ids[:1000], snapshot.task_remaining[:1000], [], undigested=1))
    assert built is not None and "the-long-id-itself" in built.data and "revstore-sha256:ab" not in built.data


def test_a_large_postgresql_load_comes_in_pieces_and_an_id_holding_the_separator_is_streamed(pg_store) -> None:  # type: ignore[no-untyped-def]
    from revstore.backends import postgresql

    ids = [f"piece-{i:06d}-" + "x" * 200 for i in range(60_000)]  # wide rows: well over PIPELINE_MIN_BLOCKS
    for start in range(0, len(ids), 20_000):
        pg_store.add(ids[start:start + 20_000], revoked_by="t")
    pg_store.add(["has\nnewline"], revoked_by="t")
    pieces: list[int] = []
    snapshot, _ = pg_store.load_active(on_piece=lambda got, left: pieces.append(len(got)))
    assert sorted(snapshot.task_ids) == sorted([*ids, "has\nnewline"]) and len(snapshot.task_remaining) == 60_001
    assert len(pieces) >= postgresql.PIPELINE_PIECES  # the last range, holding the odd id, streamed in chunks
