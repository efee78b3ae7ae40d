"""Issue 14: Flower's revoke and terminate buttons become durable once the app installs revstore.

Flower 2.x calls ``app.control.revoke``; ``revstore.install(app)`` makes that
call write the row before it broadcasts.  Real Flower, real workers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import httpx

from harness import TESTS, wait_for


def start_flower(env: dict[str, str], log) -> tuple[subprocess.Popen[bytes], str]:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workerapp", "flower", "--address=127.0.0.1", f"--port={port}",
         "--basic-auth=ops:flower-pw", "--persistent=False"],
        cwd=TESTS, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, what="Flower to answer")
    return proc, url


def test_flower_revoke_and_terminate_are_durable(cluster_factory, celery_app, tmp_path) -> None:
    cluster = cluster_factory("postgresql")
    live = cluster.worker("live").start()
    offline = cluster.worker("offline")  # not started yet: it must learn the revoke from the table
    with open(tmp_path / "flower.log", "ab") as log:
        proc, url = start_flower(cluster.env, log)
    try:
        auth = ("ops", "flower-pw")
        running = celery_app.record.apply_async(("flower-long", 60), queue=live.queue)
        wait_for(lambda: cluster.ran("flower-long"), 20, what="the long task to start")
        reply = httpx.post(f"{url}/api/task/revoke/{running.id}", params={"terminate": "true", "signal": "SIGKILL"},
                           auth=auth, timeout=10)
        assert reply.status_code == 200, reply.text
        row = cluster.store.get(running.id)
        assert row is not None and row.active and row.terminate and row.signal == "SIGKILL"
        wait_for(lambda: running.state == "REVOKED", 20, what="the running task to be terminated")
        assert not cluster.finished("flower-long")

        waiting_id = f"flower-{uuid.uuid4().hex[:8]}"
        assert httpx.post(f"{url}/api/task/revoke/{waiting_id}", auth=auth, timeout=10).status_code == 200
        assert cluster.store.is_revoked(waiting_id)
        celery_app.record.apply_async(("flower-offline",), task_id=waiting_id, queue=offline.queue)
        celery_app.record.apply_async(("flower-control",), queue=offline.queue)
        offline.start()
        wait_for(lambda: cluster.ran("flower-control"), 30, what="the offline worker's control task")
        assert not cluster.ran("flower-offline")
        assert httpx.post(f"{url}/api/task/revoke/x", timeout=10).status_code == 401  # Flower's own auth still holds
    finally:
        proc.terminate()
        proc.wait(10)
