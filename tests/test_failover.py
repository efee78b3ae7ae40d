"""Issue 21 (findings 2 and 3): a marker is only true of the database it was taken on.

Real workers, real servers.  The database under them is replaced by another
one at the same URL (dropped and re-created), put back in time (its tables
restored from a copy, as a backup restore or a point-in-time recovery does),
or failed over to a streaming replica that missed the last commits (a
private primary and replica, ``tests/pgcluster.py``, moved behind the tests'
TCP proxy the way a virtual IP moves).  In each case a revocation written
to the table alone afterwards must still reach the workers, and nothing a
worker held may be lost.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from harness import Cluster, cli, discarded, held_by, revoked_on, send, status, wait_for
from pgcluster import Pair, pg_pair  # noqa: F401 (a fixture)
from proxy import TcpProxy
from revstore import migrate
from revstore.backends.postgresql_roles import worker_sql
from revstore.store import RevocationStore

#: Seconds between polls in these tests: what "within the poll interval" is measured against.
POLL = 0.5
#: How long the workers get on top of a poll to reconnect after their connections were cut.
RECONNECT = 4.0
#: An ETA far enough ahead that the revoke lands first on a loaded machine.
ETA = 10


def copy_tables(store: RevocationStore) -> dict[str, list[dict[str, Any]]]:
    """The revocations and the clock, as rows: a backup of both tables."""
    with store.engine.begin() as conn:
        return {t.name: [dict(r) for r in conn.execute(select(t)).mappings()]
                for t in (store.tables.revocations, store.tables.clock)}


def put_back(store: RevocationStore, copy: dict[str, list[dict[str, Any]]]) -> None:
    """Replace both tables' rows with the copy's, in one transaction (a restore of the backup)."""
    with store.engine.begin() as conn:
        for table in (store.tables.revocations, store.tables.clock):
            conn.execute(table.delete())
            if copy[table.name]:
                conn.execute(table.insert(), copy[table.name])


def recreate(store: RevocationStore, backend: str, request: pytest.FixtureRequest) -> None:
    """Drop the database (schema, file) at the store's URL and create a fresh one there with ``db upgrade``."""
    store.dispose()
    if backend == "postgresql":
        with request.getfixturevalue("pg_admin_engine").connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{store.tables.schema}" CASCADE'))
    elif backend == "mariadb":
        database = request.getfixturevalue("mysql_database")
        with request.getfixturevalue("mysql_admin_engine").connect() as conn:
            conn.execute(text(f"DROP DATABASE `{database}`"))
            conn.execute(text(f"CREATE DATABASE `{database}`"))
    else:
        path = Path(store.url.database or "")
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
    migrate.upgrade(store)


def stats(cluster: Cluster) -> dict[str, Any]:
    return json.loads(cli(cluster, "stats", "--json"))


def is_active(store: RevocationStore, task_id: str) -> bool:
    row = store.get(task_id)
    return bool(row and row.active)


def assert_eta_task_never_runs(celery_app, cluster: Cluster, worker, revoke) -> None:  # type: ignore[no-untyped-def]
    """Send an ETA task and an un-revoked twin; ``revoke(id)`` the first while it waits: only the twin runs."""
    revoked = send(celery_app, worker.queue, "revoked-eta", countdown=ETA)
    control = send(celery_app, worker.queue, "control-eta", countdown=ETA)
    wait_for(lambda: held_by(celery_app, worker, revoked) and held_by(celery_app, worker, control), 15,
             what="the worker to hold both ETA tasks")
    revoke(revoked)
    assert not cluster.ran("control-eta"), "the ETA passed before the revoke: the test proves nothing"
    wait_for(lambda: cluster.finished("control-eta"), ETA + 30, what="the un-revoked ETA task to run")
    wait_for(lambda: discarded(worker, revoked), 10, what="the revoked ETA task to be discarded when due")
    assert not cluster.ran("revoked-eta"), "a task revoked in the table after the database changed ran"


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"])
def test_tables_put_back_from_a_copy_under_a_running_worker(cluster_factory, celery_app, backend) -> None:
    """A restore of both tables from a copy moves the clock back 20 versions behind the worker's marker."""
    cluster = cluster_factory(backend, revstore_sync_interval=POLL)
    store = cluster.store
    worker = cluster.worker("a").start()
    copy = copy_tables(store)
    lost = [f"lost-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    for task_id in lost:  # one version each: the clock moves 20 ahead of the copy
        store.add([task_id])
    wait_for(lambda: set(lost) <= revoked_on(celery_app.app, worker), 15, what="the worker to pull the 20 revokes")
    wait_for(lambda: status(celery_app, worker).get("marker") == store.current_version(), 10,
             what="the worker's marker to reach the clock")

    put_back(store, copy)
    assert_eta_task_never_runs(celery_app, cluster, worker, lambda task_id: cli(cluster, "revoke", task_id))

    # nothing the worker held is dropped, and what the table lost is written back
    assert set(lost) <= revoked_on(celery_app.app, worker)
    wait_for(lambda: all(is_active(store, task_id) for task_id in lost), 10, what="the lost rows to be written back")
    seen = status(celery_app, worker)["rewound"]
    assert seen and "clock went back" in seen["what"], seen
    assert "clock went back" in stats(cluster)["rewound"]
    assert worker.output().count("changed under this worker") == 1, worker.output()[-3000:]


def test_a_put_back_table_is_seen_after_later_writes_took_the_clock_past_the_marker(
    cluster_factory, celery_app, pg_proxy
) -> None:
    """The clock alone cannot tell: the worker is cut off while the tables are put back and written to again.

    By its next poll the clock is past the worker's marker, and the revoke
    written in between has a version the worker believes it has seen.  The
    row the worker pulled at its marker is gone, and that gives it away.
    """
    cluster = cluster_factory("postgresql", worker_url=pg_proxy.url, revstore_sync_interval=POLL)
    store = cluster.store
    worker = cluster.worker("a").start()
    copy = copy_tables(store)
    lost = [f"lost-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    for task_id in lost:
        store.add([task_id])
    marker = store.current_version()
    wait_for(lambda: status(celery_app, worker).get("marker") == marker, 10, what="the worker's marker to reach the clock")

    def put_back_and_write_on(task_id: str) -> None:
        pg_proxy.down()
        put_back(store, copy)
        store.add([task_id])  # at a version the worker's marker already covers
        with store.engine.begin() as conn:  # later writes: the clock passes the worker's marker
            conn.execute(store.tables.clock.update().values(version=marker + 5))
        pg_proxy.up()

    assert_eta_task_never_runs(celery_app, cluster, worker, put_back_and_write_on)
    assert set(lost) <= revoked_on(celery_app.app, worker)
    assert "the table went back" in status(celery_app, worker)["rewound"]["what"]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"])
def test_a_snapshot_of_a_dropped_and_recreated_database_is_not_trusted(cluster_factory, celery_app, backend,
                                                                        request) -> None:
    """Same URL, same state folder, another database: the snapshot's marker means nothing there."""
    cluster = cluster_factory(backend, revstore_sync_interval=POLL)
    store = cluster.store
    for i in range(20):
        store.add([f"old-{i}"])
    worker = cluster.worker("a").start()
    snapshot = cluster.tmp / "state"
    wait_for(lambda: list(snapshot.glob("*.snapshot")), 20, what="the worker's local snapshot (marker 20)")
    worker.stop()

    recreate(store, backend, request)
    revoked = send(celery_app, worker.queue, "revoked-eta", countdown=ETA + 5)
    control = send(celery_app, worker.queue, "control-eta", countdown=ETA + 5)
    cli(cluster, "revoke", revoked)  # version 1 of the new database, behind the old marker
    for i in range(25):  # the new clock passes the old marker: only the installation id tells them apart
        store.add([f"new-{i}"])

    worker.start()
    wait_for(lambda: cluster.finished("control-eta"), ETA + 40, what="the un-revoked ETA task to run")
    wait_for(lambda: discarded(worker, revoked), 10, what="the revoked ETA task to be discarded when due")
    assert not cluster.ran("revoked-eta"), "a task revoked in the re-created database ran"
    assert control
    log = worker.output()
    assert log.count("changed under this worker") == 1 and "another revstore installation" in log, log[-3000:]
    assert "another revstore installation" in status(celery_app, worker)["rewound"]["what"]


def test_failover_to_a_replica_that_missed_commits(pg_pair: Pair, tmp_path: Path, celery_app) -> None:  # noqa: F811
    """Promote a replica that missed the last commits and move the workers to it behind the proxy."""
    primary, replica = pg_pair.primary, pg_pair.replica
    store = RevocationStore(primary.url())
    migrate.upgrade(store)
    proxy = TcpProxy(("127.0.0.1", primary.port))
    cluster = Cluster(tmp_path, proxy.url(primary.url()), None, revstore_sync_interval=POLL)
    promoted: RevocationStore | None = None
    try:
        workers = [cluster.worker("a").start(), cluster.worker("b").start()]
        early = f"early-{uuid.uuid4().hex[:6]}"
        celery_app.app.control.revoke(early)
        wait_for(lambda: is_active(store, early), 10, what="the write-through of a broadcast")
        pg_pair.wait_streaming()

        # from here on the replica receives nothing
        pg_pair.detach_replica()
        pg_pair.pause_replica()
        heard = [f"heard-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
        celery_app.app.control.revoke(heard)
        pulled = [f"pulled-{i}-{uuid.uuid4().hex[:6]}" for i in range(10)]
        for task_id in pulled:
            store.add([task_id])
        wait_for(lambda: all(is_active(store, t) for t in heard), 10, what="the write-through of the late broadcast")
        held = {early, *heard, *pulled}
        for w in workers:
            wait_for(lambda w=w: held <= revoked_on(celery_app.app, w), 15, what=f"{w.name} to hold every revocation")

        # the failover: the primary dies, the replica is promoted, the address moves to it
        primary.stop("immediate")
        pg_pair.promote_replica()
        proxy.target = ("127.0.0.1", replica.port)
        proxy.cut()
        promoted = RevocationStore(replica.url())
        assert not is_active(promoted, heard[1]), "the replica did not miss the last commits: the test proves nothing"
        restored = heard[0]
        promoted.remove([restored])  # a restore written after the failover

        after = f"after-{uuid.uuid4().hex[:6]}"
        promoted.add([after])  # table-only, after the failover
        started = time.monotonic()
        for w in workers:
            wait_for(lambda w=w: after in revoked_on(celery_app.app, w), POLL + RECONNECT,
                     what=f"{w.name} to pull a revoke written after the failover")
        print(f"table-only revoke after the failover reached both workers in {time.monotonic() - started:.2f}s")

        kept = held - {restored}
        for w in workers:
            wait_for(lambda w=w: restored not in revoked_on(celery_app.app, w), POLL + RECONNECT,
                     what=f"{w.name} to drop the id restored after the failover")
            assert kept <= revoked_on(celery_app.app, w), f"{w.name} lost revocations it held"
        wait_for(lambda: all(is_active(promoted, t) for t in kept), 10,
                 what="the revocations the replica missed to be written back")
        assert not is_active(promoted, restored), "a write-back undid a restore made after the failover"

        # and the tasks behave so
        control = send(celery_app, workers[0].queue, "control")
        send(celery_app, workers[0].queue, "restored", task_id=restored)
        send(celery_app, workers[0].queue, "still-revoked", task_id=heard[1])
        wait_for(lambda: cluster.finished("control") and cluster.finished("restored"), 30,
                 what="the control task and the restored one to run")
        wait_for(lambda: discarded(workers[0], heard[1]), 10, what="the still-revoked task to be discarded")
        assert not cluster.ran("still-revoked") and control
        for w in workers:
            assert status(celery_app, w)["rewound"], f"{w.name} does not report the failover"
            assert w.output().count("changed under this worker") == 1, w.output()[-3000:]
        assert promoted.stats()["rewound_at"] is not None
    finally:
        cluster.close()
        proxy.close()
        store.dispose()
        if promoted is not None:
            promoted.dispose()


def test_a_role_refused_the_server_functions_still_polls_and_knows_the_installation(pg_pair: Pair) -> None:  # noqa: F811
    """A DBA may revoke what PostgreSQL grants everyone by default: the worker compares what it can read."""
    from revstore.identity import DbIdentity

    primary = pg_pair.primary
    admin = RevocationStore(primary.url())
    migrate.upgrade(admin)
    for function in ("pg_control_system()", "pg_current_wal_lsn()"):
        primary.sql(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")
    grants = "\n".join(line for line in worker_sql(admin.tables, "limited_worker").splitlines()
                       if not line.startswith("--"))
    for statement in filter(str.strip, grants.split(";")):
        primary.sql(statement)
    limited = RevocationStore(primary.url().replace("postgres@", "limited_worker@"))
    # a worker's one-statement start-up read is refused too: it reads the long way, which probes
    assert RevocationStore(primary.url().replace("postgres@", "limited_worker@")).startup_read() is None
    try:
        full, refused = admin.identity(), limited.identity()
        assert set(full.server) == {"system_identifier", "timeline"} and full.server["timeline"] == "00000001"
        assert refused == DbIdentity(full.installation, {}) and refused.installation
        admin.add(["t1"])
        changes = limited.changes_since(0)
        assert [r.task_id for r in changes.rows] == ["t1"] and changes.clock == 1
        assert changes.identity == refused
    finally:
        admin.dispose()
        limited.dispose()
