"""Issue 16: the database is down, workers crash and restart, nothing they heard is lost.

Outages are made with a TCP proxy between the workers and PostgreSQL
(``tests/proxy.py``); the real server keeps serving the other tests and the
"client" below, which reaches the database directly.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from harness import await_redelivery, discarded, heard_by, held_by, revoked_on, send, state_files, status, wait_for
from revstore.localstate import frame
from revstore.sync import PendingWrite
from revstore.store import Target


def spooled(task_id: str) -> bytes:
    """One spool record, exactly as a worker writes it."""
    return frame(json.dumps(PendingWrite([Target.task(task_id)], heard=time.time()).record()).encode())


def test_sigkill_and_restart_during_an_outage_lose_nothing(cluster_factory, celery_app, pg_proxy) -> None:
    cluster = cluster_factory("postgresql", worker_url=pg_proxy.url, revstore_sync_interval=0.5)
    stored = f"stored-{uuid.uuid4().hex[:6]}"
    cluster.store.add([stored])  # in the table before the outage: the snapshot must have it
    a = cluster.worker("a").start()
    b = cluster.worker("b")  # offline throughout
    wait_for(lambda: state_files(cluster, a, ".snapshot"), 15, what="the snapshot file")
    # the ETA must fall after the restart, however slowly a loaded machine gets there
    revoked = send(celery_app, a.queue, "revoked-eta", countdown=25)
    control = send(celery_app, a.queue, "control-eta", countdown=25)
    wait_for(lambda: held_by(celery_app, a, revoked) and held_by(celery_app, a, control), 15,
             what="the worker to hold both ETA tasks")
    delivered = time.monotonic()

    pg_proxy.down()
    restored = f"restored-{uuid.uuid4().hex[:6]}"
    celery_app.app.control.revoke([revoked, restored])  # a stock broadcast: only worker A hears it
    heard_by(celery_app, a)
    time.sleep(1)  # later than the revoke by more than the worker's clock error (see reliability.md)
    cluster.store.remove([restored])  # a client that reaches the database restores one of them
    wait_for(lambda: status(celery_app, a).get("pending_writes") == 2, 10, what="the writes to be queued")
    assert not cluster.finished("control-eta"), "the ETA passed before the kill: the test proves nothing"
    a.kill()
    assert not cluster.store.get(revoked)

    await_redelivery(delivered)
    a.start()  # still down: it starts from its snapshot and spool
    log = a.output()
    assert "STARTED FROM THE LOCAL SNAPSHOT" in log and "cannot connect" in log
    state = wait_for(lambda: status(celery_app, a), 20, what="the worker's status")  # {} when no reply in time
    assert state["from_snapshot"] and state["snapshot_age"] is not None and state["loaded"]
    for tag, task_id in (("stored", stored), ("revoked-now", revoked)):
        send(celery_app, a.queue, tag, task_id=task_id)
    send(celery_app, a.queue, "fresh")
    wait_for(lambda: cluster.finished("fresh") and cluster.finished("control-eta"), 40,
             what="unrevoked tasks to run during the outage")
    # revoked-eta came back with the restart and revoked-now carries the same id: two discards of it
    wait_for(lambda: discarded(a, stored) and discarded(a, revoked, times=2), 10,
             what="the worker to discard the three revoked tasks")
    assert not cluster.ran("stored") and not cluster.ran("revoked-now") and not cluster.ran("revoked-eta")

    pg_proxy.up()
    wait_for(lambda: cluster.store.is_revoked(revoked), 40, what="the spooled revoke to land")
    wait_for(lambda: not status(celery_app, a).get("from_snapshot"), 20, what="the worker to catch up")
    wait_for(lambda: restored not in revoked_on(celery_app.app, a), 20, what="the restore to win in memory")
    assert not cluster.store.is_revoked(restored)  # the restore was later than the revoke it heard
    wait_for(lambda: state_files(cluster, a, ".spool")[0].stat().st_size == 0, 10, what="the spool to empty")

    b.start()
    send(celery_app, b.queue, "revoked-on-b", task_id=revoked)
    send(celery_app, b.queue, "control-b")
    wait_for(lambda: cluster.finished("control-b"), 30, what="B's control task")
    wait_for(lambda: discarded(b, revoked), 10, what="B to discard the revoked task")
    assert not cluster.ran("revoked-on-b")
    assert a.proc.poll() is None and "Traceback" not in a.output()


def test_no_snapshot_or_a_damaged_one_refuses_to_start_blind(cluster_factory, celery_app, pg_proxy) -> None:
    cluster = cluster_factory("postgresql", worker_url=pg_proxy.url)
    a = cluster.worker("a").start()
    snapshot = wait_for(lambda: state_files(cluster, a, ".snapshot"), 15, what="the snapshot file")[0]
    a.stop()
    pg_proxy.down()

    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    snapshot.write_bytes(bytes(data))
    a.start(wait=False)
    assert a.proc.wait(60) != 0
    log = a.output(since_start=True)
    assert "is damaged" in log and str(snapshot) in log
    fatal = [line for line in log.splitlines() if "cannot connect" in line]
    assert fatal and "no local snapshot" in fatal[0] and "revstore_snapshot_max_age" in fatal[0]
    assert "Traceback" not in log and " ready." not in log
    assert snapshot.with_name(snapshot.name + ".damaged").exists()


def test_a_damaged_spool_or_torn_journal_keeps_every_readable_revoke(cluster_factory, celery_app, pg_proxy) -> None:
    cluster = cluster_factory("postgresql", worker_url=pg_proxy.url)
    stored = f"stored-{uuid.uuid4().hex[:6]}"
    cluster.store.add([stored])
    a = cluster.worker("a").start()
    wait_for(lambda: state_files(cluster, a, ".snapshot"), 15, what="the snapshot file")
    a.stop()
    pg_proxy.down()

    journal = state_files(cluster, a, ".journal")[0]
    with open(journal, "ab") as fh:  # a power cut in the middle of a journal record
        fh.write(frame(b'{"generation": "x", "rows": []}')[:-7])
    spool = state_files(cluster, a, ".spool")[0]
    first, second = f"first-{uuid.uuid4().hex[:6]}", f"second-{uuid.uuid4().hex[:6]}"
    records = [spooled(i) for i in (first, second)]
    spool.write_bytes(records[0] + b"\x00garbage\xff" * 3 + records[1] + records[0][:9])
    a.start()
    log = a.output(since_start=True)
    assert "STARTED FROM THE LOCAL SNAPSHOT" in log
    damaged = [line for line in log.splitlines() if "spool" in line and "is damaged" in line]
    assert len(damaged) == 1 and "2 revokes" in damaged[0]
    assert len([line for line in log.splitlines() if "journal" in line and "unreadable bytes" in line]) == 1
    for tag, task_id in (("stored", stored), ("first", first), ("second", second)):
        send(celery_app, a.queue, tag, task_id=task_id)
    send(celery_app, a.queue, "control")
    wait_for(lambda: cluster.finished("control"), 30, what="the control task")
    wait_for(lambda: discarded(a, stored, first, second), 10, what="the worker to discard the three revoked tasks")
    assert not cluster.ran("stored") and not cluster.ran("first") and not cluster.ran("second")

    pg_proxy.up()
    wait_for(lambda: cluster.store.is_revoked(first) and cluster.store.is_revoked(second), 40,
             what="the readable spooled revokes to land")


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_restore_right_after_a_broadcast_revoke_wins(cluster_factory, celery_app, backend) -> None:
    """Issue 16, item 5: before, 29 of 30 ids stayed revoked (the write-through landed after the restore)."""
    import revstore

    cluster = cluster_factory(backend, revstore_sync_interval=1)
    a, b = cluster.worker("a").start(), cluster.worker("b").start()
    conf = celery_app.app.conf
    conf.revstore_url, conf.revstore_schema = cluster.env["REVSTORE_URL"], cluster.store.tables.schema
    try:
        ids = [f"back-{i}-{uuid.uuid4().hex[:6]}" for i in range(30)]
        for task_id in ids:
            # the stock broadcast (not the opted-in durable call): only the workers write it through
            celery_app.app.control.broadcast("revoke", arguments={"task_id": [task_id]})
            heard_by(celery_app, a, b)
            revstore.restore(celery_app.app, task_id)
    finally:
        conf.revstore_url = conf.revstore_schema = None
    wait_for(lambda: not revoked_on(celery_app.app, a) & set(ids) and not revoked_on(celery_app.app, b) & set(ids), 30,
             what="both workers to drop every restored id")
    # every broadcast was heard before its restore (heard_by): its write-through is queued, and has landed once
    # neither worker has one pending
    wait_for(lambda: all(status(celery_app, w).get("pending_writes") == 0 for w in (a, b)), 20,
             what="both workers' write-throughs to land")
    assert [i for i in ids if cluster.store.is_revoked(i)] == []
    assert not revoked_on(celery_app.app, a) & set(ids) and not revoked_on(celery_app.app, b) & set(ids)


def test_crash_loops_leave_no_litter(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql")
    shm = Path("/dev/shm")
    a, b = cluster.worker("a"), cluster.worker("b")

    def folders(worker) -> list[str]:  # type: ignore[no-untyped-def]
        return sorted(p.name for p in shm.glob(f"revstore-{worker.nodename}*"))

    b.start()  # a live worker of another node name: never touched
    for _ in range(4):
        a.start()
        a.kill()
    assert folders(a) == [f"revstore-{a.nodename}", f"revstore-{a.nodename}.lock"]  # reused, not piled up
    assert len(state_files(cluster, a, ".spool")) == 1 and len(state_files(cluster, a, ".lock")) == 1
    assert folders(b) == [f"revstore-{b.nodename}", f"revstore-{b.nodename}.lock"]

    # a worker of another node name died with a spooled revoke: the next worker on the host replays it
    orphan = cluster.tmp / "state" / state_files(cluster, a, ".spool")[0].name.replace(a.nodename, "gone@testhost")
    lost = f"orphan-{uuid.uuid4().hex[:6]}"
    orphan.write_bytes(spooled(lost))
    orphan.with_suffix(".lock").touch()  # what a crashed worker leaves: its lock file, held by nobody
    c = cluster.worker("c").start()  # A is dead: its folder goes, B's stays
    assert folders(a) == [] and folders(b) == [f"revstore-{b.nodename}", f"revstore-{b.nodename}.lock"]
    wait_for(lambda: cluster.store.is_revoked(lost), 20, what="the orphaned spool to be replayed")
    # the file goes once its records are committed: a moment after the row is visible
    wait_for(lambda: not orphan.exists(), 10, what="the replayed spool file to be removed")
    c.stop()
    b.stop()
    assert folders(b) == [] and folders(c) == []
