"""Issue 8: PostgreSQL LISTEN/NOTIFY wakes workers at once; the poll is the net."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from celery.result import AsyncResult
from sqlalchemy import text

from harness import revoked_on, wait_for

REVSTORE = str(Path(sys.executable).with_name("revstore"))


def test_cli_only_terminate_reaches_worker_within_a_second(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql", revstore_sync_interval=60)
    worker = cluster.worker("a").start()
    wait_for(lambda: worker.nodename in cluster.store.stats()["listeners"], 10, what="the listener")
    result = celery_app.record.apply_async(("long", 30), queue=worker.queue)
    wait_for(lambda: cluster.ran("long"), 15, what="the long task to start")

    subprocess.run([REVSTORE, "revoke", result.id, "--terminate"], env=cluster.env, check=True, timeout=30)
    written = time.monotonic()
    wait_for(lambda: AsyncResult(result.id, app=celery_app.app).state == "REVOKED", 5, interval=0.02,
             what="the task to be terminated")
    latency = time.monotonic() - written
    print(f"CLI write -> task terminated: {latency * 1000:.0f} ms (poll interval 60 s)")
    assert latency < 1.0
    assert "terminating" in worker.output()


def test_listener_reconnects_and_resyncs_what_it_missed(cluster_factory, celery_app, pg_admin_engine) -> None:
    cluster = cluster_factory("postgresql", revstore_sync_interval=60)
    worker = cluster.worker("a").start()
    wait_for(lambda: worker.nodename in cluster.store.stats()["listeners"], 10, what="the listener")

    with pg_admin_engine.connect() as conn:
        killed = conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": f"revstore-listener {worker.nodename}"},
        ).scalars().all()
    assert killed == [True]
    missed = f"missed-{uuid.uuid4().hex[:6]}"
    cluster.store.add([missed])  # written while the listener is down

    wait_for(lambda: missed in revoked_on(celery_app.app, worker), 10, what="the resync after reconnect")
    assert "listener reconnected" in worker.output()
    wait_for(lambda: worker.nodename in cluster.store.stats()["listeners"], 10, what="the listener to be back")
