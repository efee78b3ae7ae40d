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
from revstore.set_entries import LOADED_SEQ, _triples, build_entries
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



_FROZEN_PROBE = """
import gc, sys, time, weakref
from array import array
from celery.utils.collections import LimitedSet
from revstore.memory import WorkerMemory
from revstore.records import Snapshot
from revstore.set_entries import RELEASE_AFTER

class Marker:  # a weak-referenceable stand-in for an entry the set drops later
    pass

memory = WorkerMemory(LimitedSet(maxlen=0, expires=100), {})
memory.prepare()
n = RELEASE_AFTER + 10
memory.load(Snapshot([f"id-{i:07d}" for i in range(n)], array("d", [5.0] * (n - 1) + [1000.0]), []))
heap, data = memory.revoked._heap, memory.revoked._data
tracked = {id(o) for o in gc.get_objects()}
later = Marker()
probe = weakref.ref(later)
del later
memory.revoked.purge(time.monotonic() + 10)
print(id(heap) in tracked, id(data) in tracked, len(memory.revoked), "id-0000000" in memory.revoked,
      f"id-{n - 1:07d}" in memory.revoked, probe() is None)
"""


def test_a_large_load_is_kept_out_of_every_later_full_collection_and_still_expires() -> None:
    """The set's million-entry heap is not walked by each full collection (the hot path's cost), and still works.

    Run in a child interpreter: the freeze is process-wide.
    """
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FROZEN_PROBE], capture_output=True, text=True, check=True).stdout
    heap_tracked, data_tracked, left, first, last, freed = out.split()
    assert (heap_tracked, data_tracked) == ("False", "False")  # frozen: no collection traverses them
    assert (left, first, last, freed) == ("1", "False", "True", "True")  # expiry still pops the loaded entries
