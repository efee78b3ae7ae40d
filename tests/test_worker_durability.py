"""Issue 3, end to end: real prefork workers, real Redis broker, real SIGKILL."""

from __future__ import annotations

import time
import uuid

import pytest
from celery.result import AsyncResult

from harness import await_redelivery, cli, discarded, held_by, revoked_on, running_pid, send, wait_for
from revstore.processes import process_alive
from revstore.store import Target


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
def test_revoked_eta_task_never_runs_after_sigkill_and_restart(cluster_factory, celery_app, backend) -> None:
    cluster = cluster_factory(backend)
    worker = cluster.worker("a").start()
    # the ETA must fall after the kill, however slowly a loaded machine gets there
    revoked = send(celery_app, worker.queue, "revoked-eta", countdown=15)
    control = send(celery_app, worker.queue, "control-eta", countdown=15)
    wait_for(lambda: held_by(celery_app, worker, revoked) and held_by(celery_app, worker, control), 15,
             what="the worker to hold both ETA tasks")
    delivered = time.monotonic()

    celery_app.app.control.revoke(revoked)
    wait_for(lambda: cluster.store.get(revoked) is not None, 5, what="the write-through row")
    assert not cluster.finished("control-eta"), "the ETA passed before the kill: the test proves nothing"
    worker.kill()  # the shelve statedb would lose the revoke here

    await_redelivery(delivered)
    worker.start()
    # the un-revoked twin proves the messages came back to the restarted worker
    wait_for(lambda: cluster.finished("control-eta"), 40, what="the control task to run after restart")
    wait_for(lambda: discarded(worker, revoked), 20, what="the restarted worker to discard the revoked task")
    assert not cluster.ran("revoked-eta")
    assert AsyncResult(revoked, app=celery_app.app).state == "REVOKED"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
def test_offline_worker_honours_revocations_it_never_heard(cluster_factory, celery_app, backend) -> None:
    cluster = cluster_factory(backend)
    a = cluster.worker("a").start()
    b = cluster.worker("b")  # offline
    heard_by_a = send(celery_app, b.queue, "revoked-broadcast")
    cli_only = send(celery_app, b.queue, "revoked-cli")
    control = send(celery_app, b.queue, "control")

    celery_app.app.control.revoke(heard_by_a)  # only worker A is alive to hear this
    wait_for(lambda: cluster.store.get(heard_by_a) is not None, 5, what="A's write-through")
    a.stop()
    cli(cluster, "revoke", cli_only)  # no worker up at all

    b.start()
    wait_for(lambda: cluster.finished("control"), 30, what="the control task")
    wait_for(lambda: discarded(b, heard_by_a) and discarded(b, cli_only), 10, what="B to discard both revoked tasks")
    assert not cluster.ran("revoked-broadcast")
    assert not cluster.ran("revoked-cli")


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_two_workers_share_revocations_and_restore(cluster_factory, celery_app, backend) -> None:
    cluster = cluster_factory(backend, revstore_sync_interval=1)
    a = cluster.worker("a").start()
    b = cluster.worker("b").start()
    task_id = f"shared-{uuid.uuid4().hex[:6]}"

    celery_app.app.control.revoke(task_id, destination=[a.nodename])  # only A hears it
    wait_for(lambda: task_id in revoked_on(celery_app.app, b), 10, what="B to learn of the revoke by sync")
    assert task_id in revoked_on(celery_app.app, a)

    cli(cluster, "restore", task_id)
    wait_for(lambda: task_id not in revoked_on(celery_app.app, a) and task_id not in revoked_on(celery_app.app, b), 10,
             what="both workers to drop the restored id")
    send(celery_app, b.queue, "after-restore", task_id=task_id)
    wait_for(lambda: cluster.finished("after-restore"), 20, what="the restored task to run")


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # woken by NOTIFY; by polling alone
def test_terminate_written_only_to_table_kills_running_task(cluster_factory, celery_app, backend) -> None:
    sync_interval = 1.0
    cluster = cluster_factory(backend, revstore_sync_interval=sync_interval)
    b = cluster.worker("b").start()
    task_id = send(celery_app, b.queue, "long", kwargs={"sleep": 30})
    wait_for(lambda: cluster.ran("long"), 15, what="the long task to start")
    pid = running_pid(celery_app, b, task_id)

    cli(cluster, "revoke", task_id, "--terminate", "--signal", "SIGKILL")
    started = time.monotonic()  # the row is committed: the CLI's start-up (seconds on a loaded machine) is behind us
    result = AsyncResult(task_id, app=celery_app.app)
    wait_for(lambda: result.state == "REVOKED", sync_interval + 5, what="the task to be terminated")
    elapsed = time.monotonic() - started
    print(f"terminate via table only ({backend}): {elapsed:.2f}s after the commit")
    assert elapsed <= sync_interval + 2.0  # + the kill, the result write and its polling
    # the pool process running it is gone, so it can never finish
    wait_for(lambda: not process_alive(pid), 10, what=f"the task's pool process {pid} to be killed")
    assert not cluster.finished("long")


def test_stamped_header_revocations_survive_restart(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql")
    worker = cluster.worker("a").start()
    celery_app.app.control.revoke_by_stamped_headers({"batch": "nightly-7"}, destination=[worker.nodename])
    wait_for(lambda: cluster.store.get(Target.stamp("batch", "nightly-7")) is not None, 5,
             what="the stamp write-through")
    worker.kill()
    worker.start()

    stamped = celery_app.record.s("stamped").set(queue=worker.queue)
    stamped.stamp(batch="nightly-7")
    stamped_id = stamped.apply_async().id
    send(celery_app, worker.queue, "unstamped")
    wait_for(lambda: cluster.finished("unstamped"), 20, what="the unstamped task")
    wait_for(lambda: discarded(worker, stamped_id), 10, what="the stamped task to be discarded")
    assert not cluster.ran("stamped")


@pytest.mark.main_only  # load and scale, not version compatibility
def test_200k_stored_revocations_all_stay_effective(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql")
    ids = [f"bulk-{i:06d}" for i in range(200_000)]
    cluster.store.add(ids)
    worker = cluster.worker("a").start()
    sample = ids[:3] + ids[100_000:100_003] + ids[-3:]  # the oldest would be evicted first by stock
    for task_id in sample:
        send(celery_app, worker.queue, task_id, task_id=task_id)
    send(celery_app, worker.queue, "control")
    wait_for(lambda: cluster.finished("control"), 30, what="the control task")
    wait_for(lambda: all(discarded(worker, t) for t in sample), 10, what="every sampled task to be discarded")
    assert [t for t in sample if cluster.ran(t)] == []


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_expired_revocations_leave_table_and_memory(cluster_factory, celery_app, backend) -> None:
    cluster = cluster_factory(backend, revstore_sync_interval=1, revstore_cleanup_interval=1)
    short, long_ = f"short-{uuid.uuid4().hex[:6]}", f"long-{uuid.uuid4().hex[:6]}"
    cluster.store.add([short], expires=15)  # outlives a worker start on a loaded machine (8 s did not, in CI)
    cluster.store.add([long_])
    worker = cluster.worker("a").start()
    assert {short, long_} <= revoked_on(celery_app.app, worker)

    wait_for(lambda: cluster.store.get(short) is None, 30, what="cleanup to delete the expired row")
    # memory lets it go at its own expiry check, not at the cleanup's delete
    wait_for(lambda: short not in revoked_on(celery_app.app, worker), 10, what="memory to drop the expired id")
    assert long_ in revoked_on(celery_app.app, worker)
    assert cluster.store.get(long_) is not None

    send(celery_app, worker.queue, "was-short", task_id=short)
    send(celery_app, worker.queue, "still-long", task_id=long_)
    wait_for(lambda: cluster.finished("was-short"), 20, what="the expired revocation's task to run")
    wait_for(lambda: discarded(worker, long_), 10, what="the still-revoked task to be discarded")
    assert not cluster.ran("still-long")
