"""Property-based tests (hypothesis) of the store and of the sync that follows it.

Any sequence of revokes, terminate revokes and restores, on SQLite and on
PostgreSQL, leaves the table equal to a plain model, and a worker memory fed
only by ``changes_since`` equal to the table.  Any storable string is stored
exactly.  Each example works in its own namespace of ids, so examples share
one migrated database without seeing each other.
"""

from __future__ import annotations

import uuid

from celery.utils.collections import LimitedSet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revstore.memory import WorkerMemory
from revstore.schema import MAX_KEY_LENGTH
from revstore.store import RevocationStore, Target

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ops = st.lists(
    st.tuples(st.sampled_from(["revoke", "terminate", "restore"]), st.sets(st.integers(0, 7), min_size=1, max_size=4)),
    min_size=1, max_size=12,
)


@SETTINGS
@given(script=ops)
def test_any_sequence_leaves_table_and_follower_equal_to_the_model(store: RevocationStore, script) -> None:  # type: ignore[no-untyped-def]
    ns = uuid.uuid4().hex[:8]
    marker = store.current_version()
    memory = WorkerMemory(revoked=LimitedSet(), stamps={})
    memory.prepare()
    model: dict[str, bool] = {}  # id -> terminate, for active revocations

    for op, picks in script:
        ids = [f"{ns}-{i}" for i in sorted(picks)]
        if op == "restore":
            store.remove(ids)
            for task_id in ids:
                model.pop(task_id, None)
        else:
            store.add(ids, terminate=op == "terminate")
            for task_id in ids:
                model[task_id] = model.get(task_id, False) or op == "terminate"
        changes = store.changes_since(marker)
        memory.apply(changes.rows)
        marker = changes.marker

        active = {r.task_id: r.terminate for r in store.iter_active("task") if r.task_id.startswith(ns)}
        assert active == model
        assert {i for i in memory.revoked if i.startswith(ns)} == set(model)


#: Any non-empty string Celery accepts: around the index-safe length, with NUL
#: and lone surrogates (those are stored by digest, see revstore.keys).
storable = st.one_of(
    st.text(min_size=1, max_size=MAX_KEY_LENGTH + 20),
    st.text(st.sampled_from("ab\x00\udcff"), min_size=MAX_KEY_LENGTH - 2, max_size=MAX_KEY_LENGTH + 2),
)


@SETTINGS
@given(task_id=storable, header=storable, value=st.one_of(storable, st.integers(), st.booleans()))
def test_any_storable_string_round_trips_exactly(store: RevocationStore, task_id: str, header: str, value) -> None:  # type: ignore[no-untyped-def]
    stamp = Target.stamp(header, value)
    store.add([task_id, stamp])
    assert store.get(task_id).task_id == task_id  # type: ignore[union-attr]
    assert store.get(stamp).target.stamp_value == value  # type: ignore[union-attr]
    store.remove([task_id, stamp])
    assert not store.is_revoked(task_id) and not store.is_revoked(stamp)
