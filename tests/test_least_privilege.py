"""Issue 5: a worker runs with a role that can touch rows and nothing else.

The role gets exactly the worker grants ``revstore db grants`` prints (the
SQL the operations guide tells admins to run): no CREATE anywhere, so a
worker that tried any DDL would fail here.  On PostgreSQL and on MariaDB.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from harness import discarded, held_by, revstore, send, wait_for
from revstore.config import normalize_url
from revstore.backends.base import WORKER_MARK

pytestmark = pytest.mark.parametrize("backend", ["postgresql", "mariadb"])

#: what ``revstore db grants`` gives new accounts; PostgreSQL's trust auth ignores it
PASSWORD = "change-me"
SUPERUSER = {"postgresql": "postgres@", "mariadb": "root@"}


@pytest.fixture
def worker_role(backend: str, request: pytest.FixtureRequest) -> str:
    role = f"rs_worker_{uuid.uuid4().hex[:8]}"
    if backend == "postgresql":
        admin, drops = request.getfixturevalue("pg_admin_engine"), [f"DROP OWNED BY {role}", f"DROP ROLE IF EXISTS {role}"]
    else:
        admin, drops = request.getfixturevalue("mysql_admin_engine"), [f"DROP USER IF EXISTS '{role}'@'%'"]

    def drop() -> None:
        with admin.connect() as conn:
            for statement in drops:
                conn.execute(text(statement))

    # registered before the cluster: runs after its workers stopped
    request.addfinalizer(drop)
    return role


def as_role(url: str, backend: str, role: str) -> str:
    return url.replace(SUPERUSER[backend], f"{role}:{PASSWORD}@")


def worker_grants(store: Any, role: str) -> list[str]:
    """The worker part of what ``revstore db grants`` prints for this store, one statement each."""
    url = store.url.render_as_string(hide_password=False)
    opts = ["--url", url] + (["--schema", store.tables.schema] if store.tables.schema else [])
    printed = revstore(*opts, "db", "grants", "--worker-role", role)
    assert printed.code == 0, printed.text
    worker = printed.out.split(WORKER_MARK, 1)[1].split("\n", 1)[1]
    sql = "\n".join(line for line in worker.splitlines() if not line.startswith("--"))
    return [s.strip() for s in sql.split(";\n") if s.strip()]


def grant(store: Any, statements: list[str]) -> None:
    """Run the grants as the superuser, connected to the revstore database (as an admin would)."""
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement.rstrip(";")))


def test_worker_with_dml_only_role_loads_writes_syncs_and_cleans(
    cluster_factory, celery_app, worker_role: str, backend: str
) -> None:
    cluster = cluster_factory(backend, worker_url=lambda u: as_role(u, backend, worker_role),
                              revstore_sync_interval=0.5, revstore_cleanup_interval=1)
    grant(cluster.store, worker_grants(cluster.store, worker_role))
    role_engine = create_engine(normalize_url(as_role(cluster.env["REVSTORE_URL"], backend, worker_role)))
    try:  # the role can create nothing
        with role_engine.connect() as conn, pytest.raises(DBAPIError, match="(?i)denied"):
            schema = f'"{cluster.store.tables.schema}".' if cluster.store.tables.schema else ""
            conn.execute(text(f"CREATE TABLE {schema}rs_sneaky (id integer)"))
    finally:
        role_engine.dispose()

    stored = f"stored-{uuid.uuid4().hex[:6]}"
    cluster.store.add([stored])
    cluster.store.add([f"expiring-{uuid.uuid4().hex[:6]}"], expires=1)
    worker = cluster.worker("a").start()  # schema check and load, as the role

    eta = send(celery_app, worker.queue, "eta", countdown=6)
    wait_for(lambda: held_by(celery_app, worker, eta), 15, what="the worker to hold the ETA task")
    celery_app.app.control.revoke(eta, destination=[worker.nodename])
    row = wait_for(lambda: cluster.store.get(eta), 10, what="the worker's write-through row")
    assert row.revoked_by == worker.nodename  # written by the worker's role, not by this client
    # and audited in the same transaction, as the role: who, and which id
    assert [(e.action, e.actor) for e in cluster.store.audit_history(key=eta)][:1] == [("revoke", worker.nodename)]

    wait_for(lambda: cluster.store.stats()["expired_awaiting_cleanup"] == 0
             and cluster.store.stats()["active"]["task"] == 2, 15, what="the worker's cleanup to delete the expired row")
    send(celery_app, worker.queue, "stored", task_id=stored)
    send(celery_app, worker.queue, "control")
    wait_for(lambda: cluster.finished("control"), 20, what="the control task")
    if backend == "postgresql":
        wait_for(lambda: worker.nodename.split("@")[0] in " ".join(cluster.store.stats()["listeners"]), 10,
                 what="the worker's listener")
    wait_for(lambda: not held_by(celery_app, worker, eta), 20, what="the ETA to pass")
    wait_for(lambda: discarded(worker, stored) and discarded(worker, eta), 10, what="both revoked tasks to be discarded")
    assert not cluster.ran("stored") and not cluster.ran("eta")
    log = worker.output().lower()
    assert "permission denied" not in log and "command denied" not in log and "traceback" not in log


def test_a_role_missing_a_grant_is_one_clear_line_not_a_traceback(
    cluster_factory, worker_role: str, backend: str
) -> None:
    cluster = cluster_factory(backend, worker_url=lambda u: as_role(u, backend, worker_role))
    grant(cluster.store, [s for s in worker_grants(cluster.store, worker_role) if "schema_info" not in s])
    worker = cluster.worker("a").start(wait=False)
    assert worker.proc is not None and worker.proc.wait(60) != 0
    log = worker.output()
    assert "the role needs SELECT on revstore_schema_info" in log and "revstore db grants" in log
    assert "Traceback" not in log
