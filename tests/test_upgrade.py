"""Issue 17: a fleet rolls from the previous release onto this one without a stop.

The previous release is built from this repository's history (tests/releases.py)
and runs as real ``celery worker`` processes from its own venv, beside this
checkout's workers, on one PostgreSQL schema and one Redis broker.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select

import revstore
from harness import LATER_RELEASE, PG_BASE, Cluster, Worker, discarded, revoked_on, revstore as new_cli, send, wait_for
from releases import Release, before_audit, before_name_rules, build, previous_version
from revstore import migrate
from revstore.store import RevocationStore


@pytest.fixture(scope="module")
def previous() -> Release:
    return build(previous_version())


@pytest.fixture(scope="module")
def legacy() -> Release:
    """0.1.0, which knows no window: it reads only ``<prefix>alembic_version``."""
    return build("0.1.0")


@pytest.fixture
def fleet(tmp_path: Path, pg_schema: str, redis_ready) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    cluster = Cluster(tmp_path, PG_BASE, pg_schema, revstore_sync_interval=0.5)
    yield cluster
    cluster.close()  # before pg_schema drops the tables under them


def old_cli(release: Release, cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "PYTHONPATH": ""}
    return subprocess.run([str(release.cli), *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=cluster.tmp)


def assert_never_ran(celery_app, cluster: Cluster, workers: list[Worker], revoked: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Send every revoked id to every worker, then an un-revoked control task behind them."""
    controls = {}
    for w in workers:
        for task_id in revoked:
            send(celery_app, w.queue, f"{task_id}-on-{w.name}", task_id=task_id)
        controls[w.name] = f"control-{uuid.uuid4().hex[:6]}"
        send(celery_app, w.queue, controls[w.name])
    for name, tag in controls.items():
        wait_for(lambda: cluster.finished(tag), 40, what=f"the control task on {name}")
    for w in workers:
        # the control task ran after them, so the lines are due; a loaded machine's log can lag (10 s once did)
        wait_for(lambda w=w: discarded(w, *revoked), 30, what=f"{w.name} to discard every revoked task")
    ran = [task_id for task_id in revoked for w in workers if cluster.ran(f"{task_id}-on-{w.name}")]
    assert ran == [], f"revoked tasks ran: {ran}"


def in_table(store: RevocationStore, task_id: str) -> bool:
    table = store.tables.revocations
    with store.engine.connect() as conn:
        return conn.execute(select(table.c.value).where(table.c.kind == "task", table.c.value == task_id)).first() is not None


def assert_started_cleanly(worker: Worker) -> None:
    log = worker.output()
    assert "CRITICAL" not in log and "Traceback" not in log, log[-3000:]


@pytest.mark.timeout(600)
def test_fleet_rolls_from_the_previous_release_without_refusal_or_lost_revocation(
    previous: Release, fleet: Cluster, pg_schema: str, celery_app
) -> None:  # type: ignore[no-untyped-def]
    cluster, stock = fleet, celery_app.app.control  # no revstore_url in this process: stock broadcasts
    opts = ["--url", PG_BASE, "--schema", pg_schema]
    ids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in
           ("old-cli", "old-heard", "new-cli", "new-client", "old-heard-after", "new-heard")}

    # The database and two workers as the previous release runs them.
    assert old_cli(previous, cluster, *opts, "db", "upgrade").returncode == 0
    a = cluster.worker("a", release=previous).start()
    b = cluster.worker("b", release=previous).start()
    assert old_cli(previous, cluster, *opts, "revoke", ids["old-cli"]).returncode == 0
    stock.revoke(ids["old-heard"], destination=[a.nodename])  # A writes it through, with the old code
    store = RevocationStore(PG_BASE, schema=pg_schema)
    try:
        # read with the columns every release has: this release's reads need its expand steps
        wait_for(lambda: in_table(store, ids["old-heard"]), 10, what="A's write-through")

        # Expand while they run; A crashes and restarts during the upgrade.
        assert new_cli(*opts, "db", "check").err.count("upgrade needed: ") == 1
        a.kill()
        a.start(wait=False)
        migrate.upgrade(store)
        a.wait_ready()
        check = new_cli(*opts, "db", "check")
        assert check.code == 0 and "compatible" in check.out and "next: deploy" in check.out, check.text
        assert old_cli(previous, cluster, *opts, "db", "check").returncode == 0  # the old package agrees

        # New-code clients write; old workers hear it and keep writing through.
        assert new_cli(*opts, "revoke", ids["new-cli"]).code == 0
        client = Celery("new-client", broker=celery_app.app.conf.broker_url)
        client.conf.update(revstore_url=PG_BASE, revstore_schema=pg_schema)
        revstore.install(client)
        report = revstore.revoke(client, ids["new-client"])  # the table first, then the broadcast
        assert report.written == 1 and report.broadcast, report
        stock.revoke(ids["old-heard-after"], destination=[b.nodename])
        wait_for(lambda: store.get(ids["old-heard-after"]) is not None, 10, what="B's write-through")
        wait_for(lambda: {ids["new-cli"], ids["new-client"]} <= revoked_on(celery_app.app, b), 20,
                 what="running old worker B to sync what new-code clients wrote")

        # The old release restarts against the expanded schema after SIGKILL, and honours everything.
        a.kill()
        a.start()
        assert_never_ran(celery_app, cluster, [a, b], list(ids.values())[:5])

        # Roll: B, then A onto this release; each one honours what both releases wrote.
        b.kill()
        b = cluster.worker("b").start()
        stock.revoke(ids["new-heard"], destination=[b.nodename])
        wait_for(lambda: store.get(ids["new-heard"]) is not None, 10, what="new B's write-through")
        wait_for(lambda: ids["new-heard"] in revoked_on(celery_app.app, a), 20, what="old A to sync new B's row")
        a.kill()
        a = cluster.worker("a").start()
        for w in (a, b):
            assert_started_cleanly(w)
        assert_never_ran(celery_app, cluster, [a, b], list(ids.values()))
        assert all(store.get(i) is not None and store.get(i).active for i in ids.values())  # type: ignore[union-attr]
        check = new_cli(*opts, "db", "check")
        assert check.code == 0 and check.out.startswith("revstore: compatible"), check.text
    finally:
        store.dispose()


def refusal(worker: Worker) -> str:
    """The worker exits non-zero, saying why in one CRITICAL line and no traceback."""
    assert worker.proc is not None and worker.proc.wait(60) != 0
    log = worker.output()
    critical = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1 and "Traceback" not in log, log[-3000:]
    return critical[0]


@pytest.mark.timeout(300)
def test_workers_start_inside_the_window_and_refuse_outside_it(
    legacy: Release, fleet: Cluster, pg_schema: str, later_release
) -> None:  # type: ignore[no-untyped-def]
    """The next release's expand step keeps 0.1.0 and this release starting; its contract step ends both."""
    store = RevocationStore(PG_BASE, schema=pg_schema)
    try:
        migrate.upgrade(store)  # up to the next release's expand step (the scripts here include it)
        old = fleet.worker("old", release=legacy).start()
        new = fleet.worker("new").start()  # schema 0901 is unknown to it: its window decides
        assert "has no script for it" in new_cli("--url", PG_BASE, "--schema", pg_schema,
                                                            "db", "check").out
        migrate.contract(store)
        for w in (old, new):
            w.kill()
            w.start(wait=False)
        assert "newer than this revstore knows" in refusal(old) and "upgrade the revstore package" in old.output()
        line = refusal(new)
        assert f"than this revstore {revstore.__version__} can run against: it needs revstore {LATER_RELEASE}" in line
        assert "revstore: package too old: " in line and line.endswith("next: deploy (upgrade the revstore package)")
    finally:
        store.dispose()


def test_a_dba_applies_the_expand_sql_to_a_database_0_1_0_created(
    legacy: Release, fleet: Cluster, pg_schema: str, pg_admin_engine
) -> None:  # type: ignore[no-untyped-def]
    """`db sql --since 0001 --phase expand`, run by hand, leaves what `db upgrade` would."""
    opts = ["--url", PG_BASE, "--schema", pg_schema]
    assert old_cli(legacy, fleet, *opts, "db", "upgrade").returncode == 0
    assert old_cli(legacy, fleet, *opts, "revoke", "before-the-upgrade").returncode == 0
    script = new_cli(*opts, "db", "sql", "--since", "0001", "--phase", "expand")
    assert script.code == 0 and script.out.startswith("-- revstore: expand steps 0001 -> ")
    with pg_admin_engine.connect() as conn:
        conn.exec_driver_sql(script.out)
    check = new_cli(*opts, "db", "check")
    assert check.code == 0 and check.out.startswith(f"revstore: compatible: schema {migrate.head_revision()}")
    assert old_cli(legacy, fleet, *opts, "db", "check").returncode == 0  # 0.1.0 still accepts it
    assert "before-the-upgrade" in new_cli(*opts, "list").out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("release", ["previous", "before-name-rules"])
def test_older_workers_run_beside_name_rules(release: str, fleet: Cluster, pg_schema: str,
                                            celery_app) -> None:  # type: ignore[no-untyped-def]
    """Issue 24: rows of the ``name`` kind, loaded at start and pulled live, leave an old worker running.

    The old worker (the previous release, and this release's code before
    name rules) takes them for stamps no task carries, so it ignores them
    (a matching task runs there) and keeps honouring every other revocation;
    this release's worker beside it discards the matching task.
    """
    previous = build(previous_version()) if release == "previous" else build("0.2.0", before_name_rules())
    cluster, opts = fleet, ["--url", PG_BASE, "--schema", pg_schema]
    store = RevocationStore(PG_BASE, schema=pg_schema)
    try:
        migrate.upgrade(store)
        for rule in (["--where", "0=named-x", "--terminate"], ["--where", "k=" + "long" * 100], []):
            name = "workerapp.charge" if not rule else "workerapp.record"
            assert new_cli(*opts, "revoke", "--name", name, *rule, "--expires", "1h").code == 0
        old = cluster.worker("old", release=previous).start()  # loads the name rows
        new = cluster.worker("new").start()
        client = Celery("names-client", broker=celery_app.app.conf.broker_url)
        client.conf.update(revstore_url=PG_BASE, revstore_schema=pg_schema)
        revstore.install(client)
        revstore.revoke_name(client, "workerapp.record", where={0: "named-y"}, expires="1h")  # pulled live
        revoked = f"by-id-{uuid.uuid4().hex[:8]}"
        assert new_cli(*opts, "revoke", revoked).code == 0
        wait_for(lambda: revoked in revoked_on(celery_app.app, old), 20, what="the old worker to pull past the name rows")

        for w in (old, new):
            for tag in ("named-x", "named-y"):
                send(celery_app, w.queue, tag, task_id=f"{tag}-on-{w.name}")
        wait_for(lambda: cluster.finished("named-x") and cluster.finished("named-y"), 30,
                 what="the old worker to run what it does not know is revoked")
        for tag in ("named-x", "named-y"):
            result = celery_app.app.AsyncResult(f"{tag}-on-{new.name}")
            wait_for(lambda: result.state == "REVOKED", 20, what=f"the new worker to discard {tag}")
        assert_never_ran(celery_app, cluster, [old, new], [revoked])

        old.kill()  # and the old release starts again on a table holding them
        old.start()
        assert_never_ran(celery_app, cluster, [old], [revoked])
        assert_started_cleanly(old)
        assert "ERROR/" not in old.output(), old.output()[-3000:]  # nothing failed on the rows it does not know
        assert "Traceback" not in new.output()
    finally:
        store.dispose()


@pytest.mark.timeout(600)
def test_0_2_0_as_deployed_keeps_running_across_the_audit_step(fleet: Cluster, pg_schema: str,
                                                               celery_app) -> None:  # type: ignore[no-untyped-def]
    """Issue 27 item 6: the audit table is an expand step; 0.2.0 workers and CLI run on it and restart on it.

    Their writes leave no audit row (they know no audit), this release's do.
    """
    deployed = build("0.2.0", before_audit())
    opts = ["--url", PG_BASE, "--schema", pg_schema]
    ids = [f"{name}-{uuid.uuid4().hex[:8]}" for name in ("new-cli", "old-cli")]
    store = RevocationStore(PG_BASE, schema=pg_schema)
    try:
        assert old_cli(deployed, fleet, *opts, "db", "upgrade").returncode == 0  # the schema 0.2.0 deployed
        old = fleet.worker("old", release=deployed).start()
        migrate.upgrade(store)  # the audit step, under the running worker
        assert old_cli(deployed, fleet, *opts, "db", "check").returncode == 0
        assert new_cli(*opts, "revoke", ids[0], "--by", "alice").code == 0
        written = old_cli(deployed, fleet, *opts, "revoke", ids[1])
        assert written.returncode == 0, written.stderr
        wait_for(lambda: set(ids) <= revoked_on(celery_app.app, old), 20, what="the running 0.2.0 worker to sync both")
        old.kill()
        old.start()  # restarts on the new schema
        assert_started_cleanly(old)
        assert_never_ran(celery_app, fleet, [old], ids)
        assert [(e.action, e.actor) for e in store.audit_history(key=ids[0])] == [("revoke", "alice")]
        assert store.audit_history(key=ids[1]) == []
    finally:
        store.dispose()
