"""Issue 18: graceful cancellation (``is_revoked()``) in every pool Celery ships.

One real worker per pool, all started at once on one PostgreSQL table (with
LISTEN/NOTIFY), shared by the tests of this module.  Each pool is revoked two
ways while a task runs: by broadcast, and through the table only (the CLI's
path, no broadcast).  The solo pool runs the task on the event-loop thread,
so it cannot consume a broadcast until the task returns: there the broadcast
case uses ``app.control.revoke`` from an app with revstore installed, which
writes the row first, the way docs/cancellation.md tells solo users to revoke.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from harness import PG_BASE, Cluster, Worker, wait_for
from revstore import migrate
from revstore.store import RevocationStore, Target

POOLS = ["prefork", "threads", "gevent", "eventlet", "solo"]
STEP = 0.1


@pytest.fixture(scope="module")
def pools(tmp_path_factory, pg_admin_engine, redis_ready) -> Iterator[tuple[Cluster, dict[str, Worker]]]:  # type: ignore[no-untyped-def]
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = RevocationStore(PG_BASE, schema=schema)
    migrate.upgrade(store)
    cluster = Cluster(tmp_path_factory.mktemp("pools"), store.url.render_as_string(hide_password=False), schema,
                      revstore_sync_interval=5)
    cluster.store = store  # type: ignore[attr-defined]
    workers = {pool: cluster.worker(pool, pool=pool) for pool in POOLS}
    try:
        for w in workers.values():
            w.start(wait=False)  # in parallel: each start costs seconds
        for w in workers.values():
            w.wait_ready(90)
        yield cluster, workers
    finally:
        cluster.close()
        store.dispose()
        with pg_admin_engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def client_app(celery_app, pools):  # type: ignore[no-untyped-def]
    cluster, _ = pools
    conf = celery_app.app.conf
    conf.revstore_url, conf.revstore_schema = cluster.env["REVSTORE_URL"], cluster.store.tables.schema
    yield celery_app
    conf.revstore_url = conf.revstore_schema = None


def _run_and_revoke(cluster: Cluster, worker: Worker, celery_app: Any, revoke: Any, what: str) -> float:
    tag = f"{worker.pool}-{what}-{uuid.uuid4().hex[:6]}"
    result = celery_app.steps.apply_async((tag,), {"n": 300, "step": STEP}, queue=worker.queue)
    step = cluster.out / f"step-{tag}"
    # a few steps in: the revoke comes to a task that is well under way
    wait_for(lambda: step.exists() and int(step.read_text() or 0) >= 4, 30, what=f"the {worker.pool} task to take a few steps")
    revoked_at = time.time()
    revoke(result.id)
    checkpoint: Path = cluster.out / f"checkpoint-{tag}"
    text_ = wait_for(lambda: checkpoint.exists() and checkpoint.read_text(), 15,
                     what=f"the {worker.pool} task to stop at a checkpoint ({what})")
    step, stopped_at = text_.split()
    latency = float(stopped_at) - revoked_at
    print(f"{worker.pool:8} {what:9} revoke-to-checkpoint {latency * 1000:5.0f} ms (step {step})")
    wait_for(lambda: result.state == "REVOKED", 10, what="state REVOKED")
    assert not cluster.finished(tag)
    assert worker.proc is not None and worker.proc.poll() is None
    return latency


@pytest.mark.parametrize("pool", POOLS)
def test_broadcast_revoke_stops_a_running_task(pool: str, pools, client_app) -> None:  # type: ignore[no-untyped-def]
    cluster, workers = pools
    worker = workers[pool]
    if pool == "solo":
        revoke = client_app.app.control.revoke  # revstore-installed: the row first, then the broadcast
    else:
        def revoke(task_id: str) -> None:  # a stock broadcast: nothing written to the table
            client_app.app.control.broadcast("revoke", arguments={"task_id": [task_id]},
                                             destination=[worker.nodename])
    latency = _run_and_revoke(cluster, worker, client_app, revoke, "broadcast")
    assert latency < 3.0  # one step + one drain tick, with a loaded machine's slack


@pytest.mark.parametrize("pool", POOLS)
def test_table_only_revoke_stops_a_running_task(pool: str, pools, client_app) -> None:  # type: ignore[no-untyped-def]
    cluster, workers = pools
    latency = _run_and_revoke(cluster, workers[pool], client_app, lambda i: cluster.store.add([i]), "table")
    assert latency < 4.0  # NOTIFY + pull + one step, with slack; polling alone would take 5 s



def _stepping(cluster: Cluster, client_app: Any, worker: Worker, tag: str) -> Any:
    result = client_app.steps.apply_async((tag,), {"n": 300, "step": STEP}, queue=worker.queue)
    wait_for(lambda: (cluster.out / f"step-{tag}").exists(), 30, what=f"the {worker.pool} task {tag} to start stepping")
    return result


@pytest.mark.parametrize("pool", POOLS)
def test_a_terminating_name_rule_stops_a_running_task(pool: str, pools, client_app) -> None:  # type: ignore[no-untyped-def]
    """Issue 24: a rule on the task's name and first argument, written to the table only, once it runs.

    Prefork, gevent and eventlet kill the task; threads and solo cannot, so
    it stops at its next ``is_revoked()``, which the rule alone makes true.
    A rule without terminate shows ``is_revoked()`` true inside the task in every pool.
    """
    cluster, workers = pools
    worker = workers[pool]
    tag = f"{pool}-name-{uuid.uuid4().hex[:6]}"
    rules = [Target.name("workerapp.steps", {0: tag}), Target.name("workerapp.steps", {0: f"{tag}-soft"})]
    try:
        result = _stepping(cluster, client_app, worker, tag)
        cluster.store.add(rules[:1], terminate=True, expires=600)
        wait_for(lambda: result.state == "REVOKED", 10, what=f"the {pool} task to stop")
        if pool in ("threads", "solo"):
            assert (cluster.out / f"checkpoint-{tag}").exists(), "is_revoked() never said True"

        soft = _stepping(cluster, client_app, worker, f"{tag}-soft")
        cluster.store.add(rules[1:], expires=600)
        wait_for(lambda: (cluster.out / f"checkpoint-{tag}-soft").exists(), 15, what=f"is_revoked() in {pool}")
        wait_for(lambda: soft.state == "REVOKED", 10, what="the softly stopped task to be REVOKED")
        assert not cluster.finished(tag) and not cluster.finished(f"{tag}-soft")
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        cluster.store.remove(rules)
