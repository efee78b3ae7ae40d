"""Issue 5: a worker runs with a role that can touch rows and nothing else.

The role gets exactly the grants ``revstore db grants`` prints (the SQL the
operations guide tells admins to run): no CREATE anywhere, so a worker that
tried any DDL would fail here.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text

from harness import wait_for
from revstore.roles import worker_sql
from test_worker_durability import held_by, send


@pytest.fixture
def worker_role(request: pytest.FixtureRequest, pg_admin_engine) -> str:  # type: ignore[no-untyped-def]
    role = f"rs_worker_{uuid.uuid4().hex[:8]}"

    def drop() -> None:
        with pg_admin_engine.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))

    # registered before the cluster: runs after its workers stopped
    request.addfinalizer(drop)
    return role


def test_worker_with_dml_only_role_loads_writes_syncs_and_cleans(
    cluster_factory, celery_app, pg_admin_engine, worker_role: str
) -> None:
    cluster = cluster_factory("postgresql", worker_url=lambda u: u.replace("postgres@", f"{worker_role}@"),
                              revstore_sync_interval=0.5, revstore_cleanup_interval=1)
    schema = cluster.store.tables.schema
    with pg_admin_engine.connect() as conn:
        conn.execute(text(worker_sql(cluster.store.tables, worker_role)))
        may_create = conn.execute(text("SELECT has_schema_privilege(:r, :s, 'CREATE')"),
                                  {"r": worker_role, "s": schema}).scalar_one()
    assert may_create is False

    stored = f"stored-{uuid.uuid4().hex[:6]}"
    cluster.store.add([stored])
    cluster.store.add([f"expiring-{uuid.uuid4().hex[:6]}"], expires=1)
    worker = cluster.worker("a").start()  # schema check and load, as the role

    eta = send(celery_app, worker.queue, "eta", countdown=6)
    wait_for(lambda: held_by(celery_app, worker, eta), 15, what="the worker to hold the ETA task")
    celery_app.app.control.revoke(eta, destination=[worker.nodename])
    row = wait_for(lambda: cluster.store.get(eta), 10, what="the worker's write-through row")
    assert row.revoked_by == worker.nodename  # written by the worker's role, not by this client

    wait_for(lambda: cluster.store.stats()["expired_awaiting_cleanup"] == 0
             and cluster.store.stats()["active"]["task"] == 2, 15, what="the worker's cleanup to delete the expired row")
    send(celery_app, worker.queue, "stored", task_id=stored)
    send(celery_app, worker.queue, "control")
    wait_for(lambda: cluster.finished("control"), 20, what="the control task")
    wait_for(lambda: worker.nodename.split("@")[0] in " ".join(cluster.store.stats()["listeners"]), 10,
             what="the worker's listener")
    wait_for(lambda: not held_by(celery_app, worker, eta), 20, what="the ETA to pass")
    time.sleep(0.5)
    assert not cluster.ran("stored") and not cluster.ran("eta")
    log = worker.output()
    assert "permission denied" not in log.lower() and "Traceback" not in log


def test_a_role_missing_a_grant_is_one_clear_line_not_a_traceback(
    cluster_factory, pg_admin_engine, worker_role: str
) -> None:
    cluster = cluster_factory("postgresql", worker_url=lambda u: u.replace("postgres@", f"{worker_role}@"))
    grants = [line for line in worker_sql(cluster.store.tables, worker_role).splitlines()
              if "schema_info" not in line]
    with pg_admin_engine.connect() as conn:
        conn.execute(text("\n".join(grants)))
    worker = cluster.worker("a").start(wait=False)
    assert worker.proc is not None and worker.proc.wait(60) != 0
    log = worker.output()
    assert "the role needs SELECT on revstore_schema_info" in log and "revstore db grants" in log
    assert "Traceback" not in log
