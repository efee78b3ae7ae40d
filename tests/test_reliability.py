"""Issue 5: the database going away never kills a worker nor loses a revocation.

Outages are made with a TCP proxy between the workers and the database
(``tests/proxy.py``): the real server keeps serving the other tests.  Each
test runs on PostgreSQL and on MariaDB.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import text

import revstore
from harness import discarded, revoked_on, send, status, wait_for
from revstore import Target
from revstore.errors import DatabaseUnavailable

PASSWORD = "Pr0xyPassw0rd"  # it must never be printed

pytestmark = pytest.mark.parametrize("backend", ["postgresql", "mariadb"])


@pytest.fixture
def with_password(backend: str, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Rewrite a URL to log in with PASSWORD: PostgreSQL's trust auth ignores it, MariaDB gets a user that has it."""
    if backend == "postgresql":
        return lambda url: url.replace("postgres@", f"postgres:{PASSWORD}@")
    admin = request.getfixturevalue("mysql_admin_engine")
    user = f"rs_{uuid.uuid4().hex[:10]}"

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))

    request.addfinalizer(drop)

    def rewrite(url: str) -> str:
        database = url.rsplit("/", 1)[1]
        with admin.connect() as conn:
            conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'"))
            conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* TO '{user}'@'%'"))
        return url.replace("root@", f"{user}:{PASSWORD}@")

    return rewrite


def test_outage_while_running_keeps_revocations_and_lands_them_later(
    cluster_factory, celery_app, db_proxy, with_password, backend
) -> None:
    cluster = cluster_factory(backend, worker_url=lambda u: with_password(db_proxy.url(u)),
                              revstore_sync_interval=0.5, revstore_listen="false")
    worker = cluster.worker("a").start()
    eta_task = send(celery_app, worker.queue, "eta", countdown=12)
    wait_for(lambda: cluster.store.current_version() >= 0 and status(celery_app, worker).get("loaded"), 10,
             what="the worker to load")

    db_proxy.down()
    outage_started = time.monotonic()
    later = f"later-{uuid.uuid4().hex[:6]}"
    celery_app.app.control.revoke([eta_task, later])
    celery_app.app.control.revoke("t-term", terminate=True, signal="SIGKILL")
    send(celery_app, worker.queue, "later", task_id=later)
    send(celery_app, worker.queue, "during-outage")
    wait_for(lambda: cluster.finished("during-outage"), 20, what="the worker to keep processing")
    wait_for(lambda: status(celery_app, worker).get("pending_writes") == 3, 10, what="the writes to be queued")
    wait_for(lambda: status(celery_app, worker).get("commit_failures", 0) >= 3, 20,
             what="the worker's write retries to fail a few times")
    assert not cluster.store.get(eta_task)

    db_proxy.up()
    wait_for(lambda: all(cluster.store.is_revoked(i) for i in (eta_task, later, "t-term")), 40,
             what="the queued writes to land after the outage")
    assert cluster.store.get("t-term").signal == "SIGKILL"
    wait_for(lambda: status(celery_app, worker).get("pending_writes") == 0, 10, what="the queue to empty")
    wait_for(lambda: discarded(worker, later), 10, what="the worker to discard the revoked task")
    # the revoked ETA task is dropped when it comes due
    wait_for(lambda: discarded(worker, eta_task), max(0.0, 12 - (time.monotonic() - outage_started)) + 10,
             what="the revoked ETA task to be discarded when due")
    assert not cluster.ran("eta") and not cluster.ran("later")

    log = worker.output()
    warnings = [line for line in log.splitlines() if "writes queued" in line]
    assert 1 <= len(warnings) <= 3, warnings  # rate limited: one per 30 s, not one per retry
    # down before a connect, or mid-query on a connection it had (both name the fix)
    assert ("cannot connect" in warnings[0] or "lost the connection" in warnings[0]) and "***" in warnings[0]
    assert PASSWORD not in log
    assert worker.proc.poll() is None


def test_database_down_at_start_refuses_by_default(cluster_factory, celery_app, db_proxy, with_password,
                                                    backend) -> None:
    cluster = cluster_factory(backend, worker_url=lambda u: with_password(db_proxy.url(u)))
    db_proxy.down()
    worker = cluster.worker("a").start(wait=False)
    assert worker.proc.wait(60) != 0
    log = worker.output()
    fatal = [line for line in log.splitlines() if "cannot connect" in line]
    assert fatal and "revstore_url" in fatal[0] and "***" in fatal[0]
    assert "Traceback" not in log and PASSWORD not in log
    assert " ready." not in log


def test_database_down_at_start_can_start_and_load_later(cluster_factory, celery_app, db_proxy, with_password,
                                                          backend) -> None:
    cluster = cluster_factory(backend, worker_url=lambda u: with_password(db_proxy.url(u)),
                              revstore_start_without_db="true", revstore_sync_interval=0.5)
    revoked = f"stored-{uuid.uuid4().hex[:6]}"
    cluster.store.add([revoked])
    db_proxy.down()
    worker = cluster.worker("a").start()  # ready although the database is down
    log = worker.output()
    assert "starting anyway" in log and "cannot connect" in log and PASSWORD not in log
    assert not status(celery_app, worker).get("loaded")

    db_proxy.up()
    wait_for(lambda: status(celery_app, worker).get("loaded"), 30, what="the retried load")
    send(celery_app, worker.queue, "stored", task_id=revoked)
    send(celery_app, worker.queue, "control")
    wait_for(lambda: cluster.finished("control"), 20, what="the control task")
    wait_for(lambda: discarded(worker, revoked), 10, what="the revoked task to be discarded")
    assert not cluster.ran("stored")


def test_connection_cuts_mid_sync_skip_and_repeat_nothing(cluster_factory, celery_app, db_proxy, backend) -> None:
    """Cut the worker's connections again and again while a client writes."""
    cluster = cluster_factory(backend, worker_url=db_proxy.url, revstore_sync_interval=0.2)
    worker = cluster.worker("a").start()
    store = cluster.store
    expected: set[str] = set()
    severed = 0
    for round_ in range(15):
        ids = [f"cut-{round_}-{i}" for i in range(40)]
        store.add(ids, terminate=round_ % 2 == 0)
        expected.update(ids)
        gone = ids[::7]
        store.remove(gone)
        expected.difference_update(gone)
        if round_ % 3 == 0:
            back = [f"cut-{round_ - 3}-0"] if round_ >= 3 else []
            if back:
                store.add(back)
                expected.update(back)
        severed += db_proxy.cut()
        time.sleep(0.15)  # time is the subject: the worker reconnects and polls between cuts
    assert {r.task_id for r in store.iter_active()} == expected
    wait_for(lambda: revoked_on(celery_app.app, worker) == expected, 30, what="memory to equal the table")
    assert worker.proc.poll() is None
    # the cuts did hit the worker (the proxy's only client): they dropped its open connections and it reconnected
    assert severed >= 5 and db_proxy.accepted > 5, (severed, db_proxy.accepted)
    if backend == "postgresql":  # and its listener (the LISTEN connection) noticed
        assert "listener lost its connection" in worker.output()


@pytest.mark.parametrize("outage", ["refused", "hanging"])
def test_stock_revoke_with_the_database_down_returns_broadcasts_and_lands_later(
    cluster_factory, celery_app, db_proxy, with_password, backend, outage, caplog
) -> None:
    """Issue 22: the patched ``app.control.revoke`` never raises where stock would not, nor waits much longer.

    The client and the worker reach the database through one proxy, which
    refuses connections or black-holes them (a firewall dropping packets).
    """
    cluster = cluster_factory(backend, worker_url=lambda u: with_password(db_proxy.url(u)),
                              revstore_sync_interval=0.5, revstore_listen="false")
    worker = cluster.worker("a").start()
    wait_for(lambda: status(celery_app, worker).get("loaded"), 10, what="the worker to load")
    conf = celery_app.app.conf
    conf.revstore_url, conf.revstore_schema = cluster.env["REVSTORE_URL"], cluster.store.tables.schema
    revoked, stamp = f"down-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    try:
        before = f"before-{uuid.uuid4().hex[:6]}"
        celery_app.app.control.revoke(before)  # committed by the client, which keeps the connection in its pool
        assert cluster.store.is_revoked(before)
        db_proxy.down() if outage == "refused" else db_proxy.hang()
        caplog.set_level(logging.WARNING, logger="revstore")
        started = time.monotonic()
        reply = celery_app.app.control.revoke(revoked, terminate=True)
        took = time.monotonic() - started
        started = time.monotonic()
        celery_app.app.control.revoke_by_stamped_headers({"batch": stamp})
        took_stamps = time.monotonic() - started
        print(f"{backend}, database {outage}: app.control.revoke returned in {took * 1000:.0f} ms, "
              f"revoke_by_stamped_headers in {took_stamps * 1000:.0f} ms")
        assert reply is None  # what stock returns without reply=True
        assert took < 1.3 and took_stamps < 1.3
        warnings = [r.getMessage() for r in caplog.records if r.name == "revstore"]
        assert len(warnings) == 2 and all("workers that hear it write it through" in w for w in warnings), warnings
        assert PASSWORD not in caplog.text

        # the explicit durable API keeps its promise: nothing broadcast unless committed
        with pytest.raises(DatabaseUnavailable):
            revstore.revoke(celery_app.app, f"api-{uuid.uuid4().hex[:6]}", broadcast=False)

        assert revoked in revoked_on(celery_app.app, worker)
        send(celery_app, worker.queue, "revoked", task_id=revoked)
        send(celery_app, worker.queue, "control")
        wait_for(lambda: cluster.finished("control"), 20, what="the control task")
        assert not cluster.ran("revoked")
    finally:
        db_proxy.resume()
        db_proxy.up() if outage == "refused" else None
        conf.revstore_url = conf.revstore_schema = None
    wait_for(lambda: cluster.store.is_revoked(revoked) and cluster.store.get(Target.stamp("batch", stamp)), 40,
             what="the worker to write both revocations through")
    assert cluster.store.get(revoked).terminate
