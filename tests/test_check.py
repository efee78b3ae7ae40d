"""Issue 27: ``revstore check`` exits with each documented code, against real workers and PostgreSQL.

The command runs in a subprocess, as a Kubernetes probe would run it, both
as ``revstore`` and as ``celery -A workerapp revstore``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from harness import BROKER_URL, PG_BASE, Result, assert_one_line_error, revstore, wait_for
from revstore import health

TESTS = Path(__file__).resolve().parent


def celery_revstore(*args: str, env: dict[str, str]) -> Result:
    """``celery -A workerapp revstore ARGS``: the app comes from Celery's own -A."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("REVSTORE_")}
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "workerapp", "revstore", *args],
                          capture_output=True, text=True, env={**base, **env}, cwd=TESTS, timeout=60)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def listener_live(celery_app, node: str) -> bool:  # type: ignore[no-untyped-def]
    replies = celery_app.app.control.broadcast("revstore_status", destination=[node], reply=True, limit=1, timeout=2)
    return bool(replies and replies[0][node].get("listener_live"))


def test_every_exit_code_of_check(cluster_factory, celery_app, pg_proxy) -> None:
    cluster = cluster_factory("postgresql", revstore_sync_interval=30)
    a = cluster.worker("a").start(wait=False)
    b = cluster.worker("b", REVSTORE_LISTEN_URL=pg_proxy.url(PG_BASE)).start(wait=False)
    env = {"REVSTORE_URL": PG_BASE, "REVSTORE_SCHEMA": cluster.store.tables.schema, "TEST_BROKER": BROKER_URL,
           "PYTHONPATH": str(TESTS)}

    # the database: reachable and migrated (0), unreachable (3), not migrated (4), no URL (1), bad option (2)
    ok = revstore("check", env=env, cwd=str(TESTS))
    assert ok.code == health.EXIT_OK and ok.out.startswith("ok: ") and "compatible" in ok.out, ok
    down = revstore("check", env={**env, "REVSTORE_URL": "postgresql://postgres:pw-secret@127.0.0.1:1/test"})
    assert down.code == health.EXIT_DATABASE and "pw-secret" not in down.text
    assert_one_line_error(down, "cannot connect")
    empty = revstore("check", "--schema", f"t_empty_{uuid.uuid4().hex[:8]}", env=env)  # never migrated
    assert empty.code == health.EXIT_SCHEMA
    assert_one_line_error(empty, "upgrade needed")
    unset = revstore("check")
    assert unset.code == health.EXIT_CONFIG
    assert_one_line_error(unset, "no database URL")
    assert revstore("check", "--max-lag", "soon", env=env).code == health.EXIT_USAGE

    # the workers: all answer and are caught up (0), one that does not exist (5)
    a.wait_ready()
    b.wait_ready()
    wait_for(lambda: listener_live(celery_app, a.nodename) and listener_live(celery_app, b.nodename), 15,
             interval=0.3, what="both listening")
    every = celery_revstore("check", "--all", "--timeout", "3", env=env)
    assert every.code == health.EXIT_OK, every
    assert f"ok: {a.nodename}" in every.out and f"ok: {b.nodename}" in every.out
    missing = revstore("-A", "workerapp", "check", "--worker", a.nodename, "--worker", "nobody@testhost",
                       "--timeout", "2", env=env, cwd=str(TESTS))
    assert missing.code == health.EXIT_NO_REPLY, missing
    assert "nobody@testhost did not answer within 2s" in missing.err and f"ok: {a.nodename}" in missing.out

    # unhealthy (6): b's LISTEN connection cut, then b behind the table for longer than --max-lag
    pg_proxy.down()
    wait_for(lambda: not listener_live(celery_app, b.nodename), 20, interval=0.3, what="b's listener to go down")
    deaf = celery_revstore("check", "--worker", b.nodename, "--timeout", "5", env=env)
    assert deaf.code == health.EXIT_UNHEALTHY and "listener down" in deaf.err, deaf
    assert celery_revstore("check", "--worker", a.nodename, "--timeout", "5", env=env).code == health.EXIT_OK
    cluster.store.add(["after-the-cut"])  # a hears it at once, b only at its poll in 30 s
    behind = celery_revstore("check", "--worker", b.nodename, "--max-lag", "0", "--timeout", "5", env=env)
    assert behind.code == health.EXIT_UNHEALTHY and "1 versions behind" in behind.err, behind
    both = celery_revstore("check", "--all", "--timeout", "3", env=env)
    assert both.code == health.EXIT_UNHEALTHY and f"ok: {a.nodename}" in both.out
