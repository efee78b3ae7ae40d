"""Issue 4: durable client revokes, graceful cancellation, workflow revokes."""

from __future__ import annotations

import logging
import time
import uuid
from types import SimpleNamespace

import pytest
from celery import Celery, chain
from celery.result import AsyncResult, GroupResult

import revstore
from harness import discarded, heard_by, held_by, revoked_on, status, wait_for
from revstore import RevocationStore, migrate


@pytest.fixture
def client(celery_app, cluster_factory, request):  # type: ignore[no-untyped-def]
    """A cluster (on PostgreSQL unless parametrized) and the client app pointed at the same table."""
    cluster = cluster_factory(getattr(request, "param", "postgresql"), revstore_sync_interval=1)
    conf = celery_app.app.conf
    conf.revstore_url = cluster.env["REVSTORE_URL"]
    conf.revstore_schema = cluster.store.tables.schema
    yield cluster
    conf.revstore_url = None
    conf.revstore_schema = None


@pytest.mark.parametrize("client", ["postgresql", "mariadb"], indirect=True)
def test_revoke_with_no_worker_running_is_honoured_later(client, celery_app) -> None:
    worker = client.worker("a")  # not started
    tags = ("api", "stock", "group", "control")
    ids = [f"{tag}-{uuid.uuid4().hex[:6]}" for tag in tags]
    for task_id, tag in zip(ids, tags):
        celery_app.record.apply_async((tag,), queue=worker.queue, task_id=task_id)

    report = revstore.revoke(celery_app.app, ids[0])
    assert report.written == 1  # durable even though nobody heard the broadcast
    AsyncResult(ids[1], app=celery_app.app).revoke()  # the stock calls, opted in by install()
    GroupResult(uuid.uuid4().hex, [AsyncResult(ids[2], app=celery_app.app)], app=celery_app.app).revoke()
    assert client.store.is_revoked(ids[1]) and client.store.is_revoked(ids[2])

    worker.start()
    wait_for(lambda: client.finished("control"), 30, what="the control task")
    wait_for(lambda: all(discarded(worker, t) for t in ids[:3]), 10, what="the three revoked tasks to be discarded")
    assert not client.ran("api") and not client.ran("stock") and not client.ran("group")


def test_running_task_stops_cleanly_within_one_step(client, celery_app) -> None:
    worker = client.worker("a").start()
    result = celery_app.steps.apply_async(("graceful",), {"n": 100, "step": 0.1}, queue=worker.queue)
    # a few steps in: the revoke comes to a task that is well under way
    wait_for(lambda: (client.out / "step-graceful").exists() and int((client.out / "step-graceful").read_text() or 0) >= 4,
             15, what="the task to take a few steps")

    revoked_at = time.time()
    celery_app.app.control.revoke(result.id)  # no terminate: the task decides how to stop
    checkpoint = wait_for(lambda: (client.out / "checkpoint-graceful").exists()
                          and (client.out / "checkpoint-graceful").read_text(), 5,
                          what="the task to checkpoint")
    step, stopped_at = checkpoint.split()
    latency = float(stopped_at) - revoked_at
    print(f"graceful stop latency: {latency * 1000:.0f} ms at step {step}")
    assert latency < 0.1 + 0.1 + 0.3  # one step + one drain tick + scheduling slack
    wait_for(lambda: result.state == "REVOKED", 5, what="state REVOKED")
    assert not client.finished("graceful")


@pytest.mark.parametrize("client", ["postgresql", "mariadb"], indirect=True)
def test_revoking_a_chain_root_stops_the_rest_everywhere_across_restart(client, celery_app) -> None:
    a = client.worker("a").start()
    b = client.worker("b").start()
    record = celery_app.record
    workflow = chain(
        record.si("c1", 4).set(queue=a.queue),
        record.si("c2").set(queue=b.queue),
        record.si("c3").set(queue=a.queue),
    ).apply_async()
    root_id = workflow.parent.parent.id
    wait_for(lambda: client.ran("c1"), 15, what="the first link to start")

    # B is down before the revoke and until after it: it learns of it from the table alone.
    # (Killed after the revoke, a B that had already dropped c2 -- c1 done first under load --
    # left nothing for its next life to drop.)
    b.kill()
    assert not client.finished("c1"), "the first link ended before B was down: give it longer"
    revstore.revoke_root(celery_app.app, root_id)
    b.start()
    wait_for(lambda: client.finished("c1"), 20, what="the running link to finish")
    # c1 sent c2 on to B when it finished: B drops it, so c2 never sends c3
    wait_for(lambda: discarded(b, workflow.parent.id), 20, what="B to discard the second link")
    assert not client.ran("c2") and not client.ran("c3")
    assert AsyncResult(workflow.parent.id, app=celery_app.app).state == "REVOKED"


def test_stamp_revokes_from_clients_are_durable(client, celery_app) -> None:
    from revstore.store import Target

    report = revstore.revoke_by_stamped_headers(celery_app.app, {"batch": ["x", 7]})
    assert report.written == 2 and report.broadcast
    celery_app.app.control.revoke_by_stamped_headers({"tenant": "acme"})  # stock call, opted in
    for target in (Target.stamp("batch", "x"), Target.stamp("batch", 7), Target.stamp("tenant", "acme")):
        assert client.store.is_revoked(target)
    assert revstore.restore(celery_app.app, ["never-revoked"]) == 0


def test_a_durable_broadcast_that_arrives_after_a_restore_does_not_revive_it(client, celery_app) -> None:
    """The table decides: NOTIFY can beat the broker, so a worker may sync a
    revoke *and* its restore before the revoke's broadcast reaches it."""

    worker = client.worker("a").start()
    task_id = f"late-{uuid.uuid4().hex[:6]}"
    report = revstore.revoke(celery_app.app, task_id, broadcast=False)
    wait_for(lambda: task_id in revoked_on(celery_app.app, worker), 10, what="the worker to sync the revoke")
    revstore.restore(celery_app.app, [task_id])
    wait_for(lambda: task_id not in revoked_on(celery_app.app, worker), 10, what="the worker to sync the restore")
    written_at = client.store.get(task_id).version - 1  # the revoke's version: the restore's is the next
    assert written_at > 0

    # the revoke's broadcast, delivered late, exactly as revstore.revoke sends it
    celery_app.app.control.broadcast("revoke", arguments={"task_id": [task_id], "revstore_durable": written_at},
                                     destination=[worker.nodename])
    heard_by(celery_app, worker)  # it applied the broadcast and queued the recheck against the table
    wait_for(lambda: task_id not in revoked_on(celery_app.app, worker), 10, what="the recheck to drop the late revoke")
    celery_app.record.apply_async(("late",), queue=worker.queue, task_id=task_id)
    wait_for(lambda: client.finished("late"), 20, what="the restored task to run")


def test_revocations_outlive_the_eta_of_tasks_a_worker_holds(client, celery_app) -> None:
    """A 20 s default expiry must not let a task due in 5 minutes run: the worker
    holding it extends the row, whichever path the revocation took."""

    worker = client.worker("a").start()
    ids = {tag: celery_app.record.apply_async((tag,), queue=worker.queue, countdown=300).id
           for tag in ("table-only", "client", "restored")}
    wait_for(lambda: all(held_by(celery_app, worker, i) for i in ids.values()), 15, what="the worker to hold the ETA tasks")

    client.store.add([ids["table-only"]], expires=20)  # the CLI's path: no broadcast
    revstore.revoke(celery_app.app, ids["client"], expires=20)  # durable, then broadcast
    client.store.add([ids["restored"]], expires=20)
    client.store.remove([ids["restored"]])

    def remaining(tag: str) -> float:
        row = client.store.get(ids[tag])
        return row.remaining if row is not None and row.active else 0.0

    wait_for(lambda: remaining("table-only") > 300 and remaining("client") > 300, 15,
             what="the worker to extend both revocations past the ETA")

    def quiet() -> bool:  # in step with the table, nothing left to apply or extend: every extension it would make is made
        state = status(celery_app, worker)
        rows = client.store.get_many(list(ids.values()))  # the restored row included: a tombstone keeps its version
        return (state.get("marker", -1) >= max(r.version for r in rows.values()) and state.get("unapplied") == 0
                and state.get("pending_extends") == 0)

    wait_for(quiet, 15, what="the worker to have made every extension")
    assert not client.store.get(ids["restored"]).active  # an extension never revives a restore
    # audited under the worker that extended it
    assert ("extend", worker.nodename) in [(e.action, e.actor) for e in client.store.audit_history(key=ids["client"])]


@pytest.mark.parametrize("odd", [True, False], ids=["odd-input", "no-tables"])
def test_patched_calls_never_raise_where_stock_would_not(tmp_path, caplog, odd: bool) -> None:
    """What the table refuses is one warning per call, and the broadcast goes out as stock sends it."""
    app = Celery("odd", broker="memory://", set_as_current=False)
    revstore.install(app)
    app.conf.revstore_url = f"sqlite:///{tmp_path / 'revstore.sqlite3'}"
    if odd:
        migrate.upgrade(RevocationStore(app.conf.revstore_url))
    calls = {
        "revoke": lambda control: control.revoke(["ok", 5, None] if odd else "fine", terminate=True,
                                                 signal="SIGNOPE" if odd else "SIGKILL"),
        "revoke_by_stamped_headers": lambda control: control.revoke_by_stamped_headers(
            ["no-equals-sign"] if odd else {"batch": 1}),
    }
    stock = app.control._revstore_original
    # an in-process Celery worker earlier in this process (start_worker in tests/test_stock_parity.py) leaves
    # the root logger at ERROR: the warnings are looked for at revstore's own logger, whatever the root's level
    caplog.set_level(logging.WARNING, logger="revstore")
    for name, call in calls.items():
        caplog.clear()
        assert call(app.control) == call(SimpleNamespace(**stock)) is None
        warnings = [r.getMessage() for r in caplog.records if r.name == "revstore"]
        assert len(warnings) == 1 and f"app.control.{name} could not write" in warnings[0], warnings
