"""Issue 21, findings 1 and 4: a SIGKILL soon after start never costs a revocation, and leaves a snapshot.

In 0.2.0 the snapshot base of a start-up load was written 5 s after it:
pulls made before then were never journaled, so a worker killed later
restarted from a base at the load's marker and a journal that had moved past
them (the revokes of its first seconds ran), and a worker killed before then
had no snapshot to start from during an outage.
"""

from __future__ import annotations

import time
import uuid

from harness import revoked_on, send, state_files, status, wait_for


def test_table_only_revokes_of_a_workers_first_seconds_survive_its_sigkill(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql", revstore_sync_interval=0.5)
    a = cluster.worker("a").start()
    started = time.monotonic()
    early, later = f"early-{uuid.uuid4().hex[:6]}", f"later-{uuid.uuid4().hex[:6]}"
    cluster.store.add([early])  # table only: no broadcast, the worker pulls it
    wait_for(lambda: early in revoked_on(celery_app.app, a), 10, what="the worker to pull the first revoke")
    # past the moment 0.2.0 wrote its deferred base, then one more pull
    time.sleep(max(0.0, 6.0 - (time.monotonic() - started)))
    cluster.store.add([later])
    wait_for(lambda: later in revoked_on(celery_app.app, a), 10, what="the worker to pull the second revoke")
    a.kill()

    a.start()
    assert "from the local snapshot" in a.output(), "the restart did not use the snapshot: the test proves nothing"
    assert {early, later} <= revoked_on(celery_app.app, a)
    send(celery_app, a.queue, "early", task_id=early)
    send(celery_app, a.queue, "control")
    wait_for(lambda: cluster.finished("control"), 30, what="the control task")
    assert not cluster.ran("early")


def test_a_worker_killed_right_after_its_first_load_restarts_during_an_outage(
    cluster_factory, celery_app, pg_proxy
) -> None:
    cluster = cluster_factory("postgresql", worker_url=pg_proxy.url)
    stored = f"stored-{uuid.uuid4().hex[:6]}"
    cluster.store.add([stored])
    a = cluster.worker("a").start()
    wait_for(lambda: status(celery_app, a).get("loaded"), 10, what="the first load")
    wait_for(lambda: state_files(cluster, a, ".snapshot"), 2, what="the snapshot, written with the first load")
    pg_proxy.down()
    a.kill()

    a.start()  # the database is still unreachable
    assert "STARTED FROM THE LOCAL SNAPSHOT" in a.output()
    send(celery_app, a.queue, "stored", task_id=stored)
    send(celery_app, a.queue, "control")
    wait_for(lambda: cluster.finished("control"), 30, what="the control task")
    assert not cluster.ran("stored")
    pg_proxy.up()
