"""The store's core promises, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from harness import wait_for
from revstore.errors import InvalidInput
from revstore.store import Target


def test_revoke_is_idempotent_and_keeps_strongest_terminate(store) -> None:
    store.add(["a"], terminate=True, signal="KILL", reason="first")
    again = store.add(["a", "b"])  # weaker: must not clear terminate
    assert again.changed == 1
    row = store.get("a")
    assert row.active and row.terminate and row.signal == "SIGKILL" and row.reason == "first"
    assert store.get("b").terminate is False
    assert store.add(["a"], terminate=True).changed == 0


def test_restore_leaves_a_tombstone_readers_see(store) -> None:
    store.add(["a", "b"])
    marker = store.changes_since(0).marker
    assert store.remove(["a"]).changed == 1
    changes = store.changes_since(marker)
    assert [(r.task_id, r.active) for r in changes.rows] == [("a", False)]
    assert not store.is_revoked("a") and store.is_revoked("b")
    assert [r.task_id for r in store.iter_active()] == ["b"]


def test_expiry_is_decided_by_database_time(store) -> None:
    store.add(["short"], expires=5)  # long enough to be seen revoked on a loaded machine (1 s once was not)
    store.add(["long"], expires=3600)
    store.add(["never"], expires=None)
    assert store.is_revoked("short")
    wait_for(lambda: not store.is_revoked("short"), 30, what="the database to expire 'short'")
    rows, _ = store.load_active()
    assert sorted(v for _, _, v, _ in rows) == ["long", "never"]
    remaining = {v: r for _, _, v, r in rows}
    assert remaining["never"] is None and 3500 < remaining["long"] <= 3600
    assert store.purge_expired(batch=1) == 1
    assert store.get("short") is None and store.get("long") is not None


def test_stamps_and_roots_are_stored_exactly(store) -> None:
    store.add([Target.stamp("batch", 7), Target.stamp("batch", "7"), Target.root("r1")])
    kinds = sorted(
        [(r.target.kind, r.target.header, r.target.stamp_value if r.target.kind == "stamp" else r.target.value)
         for r in store.iter_active()],
        key=repr,
    )
    assert kinds == sorted([("root", "", "r1"), ("stamp", "batch", 7), ("stamp", "batch", "7")], key=repr)


@pytest.mark.parametrize("bad", [None, 5, ""])
def test_bad_ids_are_rejected_and_nothing_is_written(store, bad) -> None:
    with pytest.raises(InvalidInput):
        store.add(["ok", bad])
    assert store.get("ok") is None


def test_hostile_strings_are_stored_exactly(store) -> None:
    ids = ["'; DROP TABLE x; --", 'quote"s', "ünïcødé ✓", "a%s%%b", "back\\slash"]
    store.add(ids)
    assert sorted(r.task_id for r in store.iter_active()) == sorted(ids)


def test_a_late_write_through_does_not_undo_a_newer_restore(store) -> None:
    """A slow worker's copy of an old broadcast must not bring back what was restored since."""
    store.add(["x"])
    heard = time.monotonic()  # a worker hears the revoke here, and is slow to write it
    time.sleep(0.3)  # time is the subject: the restore comes after the revoke was heard
    store.remove(["x"])
    late = store.add(["x"], if_needed=True, decided_ago=time.monotonic() - heard)
    assert late.changed == 0 and late.unwritten == 1
    assert not store.is_revoked("x")
    fresh = store.add(["x"], if_needed=True, decided_ago=0.0)  # a revoke heard after the restore
    assert fresh.changed == 1 and store.is_revoked("x")


def test_start_up_load_holds_ids_with_newlines(store) -> None:
    """The packed start-up load joins ids with newlines; such ids must still load exactly."""
    ids = [f"plain-{i}" for i in range(50)] + ["new\nline", "\n"]
    store.add(ids)
    snapshot, _ = store.load_active()
    assert sorted(snapshot.task_ids) == sorted(ids)


def test_start_up_load_gives_every_id_once_with_its_own_lifetime(store) -> None:
    """Ids of every shape (too long for the key column, looking like a digest, holding the packed
    load's separator) load once each, as themselves, with their own remaining lifetime."""
    from revstore.keys import DIGEST_PREFIX

    short = [f"short-{i:02d}" for i in range(20)] + ["x" * 300, DIGEST_PREFIX + "not-one"]
    never = [f"never-{i:02d}" for i in range(9)] + ["never-with\nnewline", "y" * 1000]
    store.add(short, expires=600)
    store.add(never, expires=None)
    store.add(["gone", "z" * 400], expires=0.2)
    store.add([Target.stamp("h", "v" * 300)])
    wait_for(lambda: store.stats()["expired_awaiting_cleanup"] == 2, 10, what="the two short rows to expire")
    snapshot, _ = store.load_active()
    left = dict(zip(snapshot.task_ids, snapshot.task_remaining))
    assert len(snapshot.task_ids) == len(left) == len(short) + len(never)
    assert set(left) == set(short) | set(never)
    assert all(590 < left[i] <= 600 for i in short)
    assert all(left[i] == float("inf") for i in never)
    assert [(kind, header, value) for kind, header, value, _ in snapshot.others] == [
        ("stamp", "h", Target.stamp("h", "v" * 300).value)]


def test_the_one_transaction_start_up_read_gives_what_the_long_way_gives(store) -> None:
    """A worker's start-up read (schema row, identity, marker, time and rows in one transaction) reads
    what check_schema, identity(), load_active() and db_now() read one by one."""
    from revstore import migrate
    from revstore.dbclock import epoch

    store.add([f"t-{i}" for i in range(30)] + ["with\nnewline", "x" * 300], expires=600)
    store.add([Target.root("r1")], expires=None)
    read = store.startup_read()
    assert read is not None
    rows, marker = store.load_active()
    assert migrate.check_schema(store, state=read.schema).ok and read.schema == migrate.read_state(store)
    assert read.identity == store.identity() and read.marker == marker
    assert dict(zip(read.rows.task_ids, read.rows.task_remaining)).keys() == set(rows.task_ids)
    assert [o[:3] for o in read.rows.others] == [o[:3] for o in rows.others]
    assert abs(read.db_now - epoch(store.db_now())) < 5


def test_a_restore_before_the_revoke_lands_leaves_a_tombstone_that_wins(store) -> None:
    """A write-through heard before a restore but committed after it must lose (issue 16)."""
    assert store.remove(["early"]).changed == 0  # nothing revoked yet: still a tombstone
    row = store.get("early")
    assert row is not None and not row.active
    late = store.add(["early"], decided_ago=5.0)  # heard 5 s ago, before the restore
    assert late.changed == 0 and late.unwritten == 1
    assert not store.is_revoked("early")
    assert store.add(["early"]).changed == 1  # a revoke made after the restore wins
    assert store.is_revoked("early")


def test_cleanup_deletes_exactly_the_expired_rows_in_short_pieces(store) -> None:
    """A batch larger than one statement's piece (MySQL locks and deletes 1,000 at a time) still
    deletes every expired row once and leaves the live ones."""
    expired = [f"old-{i:05d}" for i in range(2300)]
    live = [f"live-{i:03d}" for i in range(50)]
    store.add(expired, expires=0.3)
    store.add(live, expires=600)
    wait_for(lambda: store.stats()["expired_awaiting_cleanup"] == len(expired), 10, what="the short rows to expire")
    assert store.purge_expired(batch=2000) == len(expired)
    assert store.purge_expired() == 0
    snapshot, _ = store.load_active()
    assert sorted(snapshot.task_ids) == live
    assert store.stats()["active"]["task"] == len(live) and store.get(expired[0]) is None


@pytest.mark.parametrize("if_needed", [False, True], ids=["client", "write-through"])
def test_a_later_revoke_keeps_its_own_short_lifetime(store, if_needed: bool) -> None:
    """``expires=30`` given after ``expires=3`` keeps the id revoked 30 s from the second revoke.

    A flat minute of slack, meant to spare N workers rewriting one
    broadcast's row, swallowed such a re-revoke: the checker saw the task run
    while the second revoke's lifetime had seconds left.
    """
    store.add(["short-then-longer"], expires=3, if_needed=if_needed)
    store.add(["short-then-longer"], expires=30, if_needed=if_needed)
    row = store.get("short-then-longer")
    assert row.active and row.remaining is not None and row.remaining > 29, row
    # a default lifetime (days) still spares the rewrite: the second write changes nothing
    store.add(["default"], if_needed=if_needed)
    assert store.add(["default"], if_needed=if_needed).changed == 0


def test_a_bulk_revoke_over_stored_rows_merges_them_as_a_small_one_would(store) -> None:
    """From 1,000 keys a write tries a plain INSERT first: stored keys must still merge by the upsert's rules."""
    ids = [f"bulk-{i:05d}" for i in range(1500)]
    store.add(ids[100:110], terminate=True, signal="KILL", reason="first", expires=7200)  # stronger: kept
    store.add(ids[200:210], expires=60)  # shorter: extended
    store.remove(ids[300:310])  # tombstones: revived
    result = store.add(ids, expires=3600)
    assert (result.changed, result.unwritten) == (1490, 10)
    row = store.get(ids[100])
    assert row.terminate and row.signal == "SIGKILL" and row.reason == "first"
    assert sorted(r.task_id for r in store.iter_active()) == ids
    assert store.add(ids, expires=3600).changed == 0


def test_a_bulk_revoke_stores_ids_holding_newlines_exactly(store) -> None:
    """Bulk task ids may travel joined by a newline: ids holding one must still be stored one by one."""
    ids = [f"line\n{i}" for i in range(1200)] + ["\n", "a\x01b", "plain"]
    assert store.add(ids).changed == len(ids)
    assert sorted(r.task_id for r in store.iter_active()) == sorted(ids)
    assert store.add(["solo\nid"]).changed == 1 and store.is_revoked("solo\nid") and not store.is_revoked("solo")
