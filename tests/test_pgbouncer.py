"""Issue 15: revstore behind PgBouncer (transaction and session mode).

``.ci/services`` starts a PgBouncer in transaction mode on 127.0.0.1:6432 in
front of the test PostgreSQL; the session-mode one is started here.  Workers
reach the database through the pooler; LISTEN either goes through it too
(and must be found deaf) or straight to PostgreSQL (``revstore_listen_url``).
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import text

from harness import BROKER_URL, PG_BASE, PG_HOST, PG_PORT, PGBOUNCER_PORT, revoked_on, revstore, status, wait_for
from revstore import client, migrate
from revstore.store import RevocationStore

ROOT = Path(__file__).resolve().parent.parent
TRANSACTION_PORT = PGBOUNCER_PORT
BROKER = BROKER_URL  # workerapp's broker
#: what a database error looks like in a worker log (psycopg/SQLAlchemy class
#: names, revstore's retry warning, PgBouncer/psycopg prepared-statement trouble)
DB_ERROR = re.compile(r"Error\b|Traceback|prepared statement|database error|retrying in")


def via(port: int, url: str = PG_BASE) -> str:
    return url.replace(f"{PG_HOST}:{PG_PORT}", f"{PG_HOST}:{port}")


def reachable(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def pgbouncer() -> str:
    """The transaction-mode PgBouncer of .ci/services: a URL template through it."""
    if not reachable(TRANSACTION_PORT):  # a missing server is a failure, never a skip
        pytest.fail(f"PgBouncer is required at 127.0.0.1:{TRANSACTION_PORT}: run `bash .ci/services`", pytrace=False)
    return via(TRANSACTION_PORT)


@pytest.fixture(scope="module")
def session_pgbouncer(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A session-mode PgBouncer of this module's own, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = Path(f"/tmp/revstore-pgbouncer-test-{port}")
    started = subprocess.run(["bash", str(ROOT / ".ci" / "pgbouncer"), str(port), "session", str(folder)],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    yield via(port)
    pid = int((folder / "pgbouncer.pid").read_text())
    subprocess.run(["kill", str(pid)], check=False)


def cli(env: dict[str, str], *args: str) -> str:
    result = revstore(*args, env={k: v for k, v in env.items() if k.startswith(("REVSTORE_", "CELERY_"))})
    assert result.code == 0, result
    return result.out


def stop_graceful_task(cluster, celery_app, worker, env: dict[str, str] | None = None) -> float:
    """Start a RevocableTask, revoke it with the CLI (table only), return seconds from commit to stop.

    The commit time is the row's revoked_at (database clock, same host), the
    stop time the one the task wrote at its checkpoint: the CLI's start-up
    is left out.
    """
    tag = f"g-{uuid.uuid4().hex[:6]}"
    result = celery_app.steps.apply_async((tag, 1200, 0.05), queue=worker.queue)
    wait_for(lambda: (cluster.out / f"step-{tag}").exists(), 20, what="the graceful task to start")
    cli({**cluster.env, **(env or {})}, "revoke", result.id)
    checkpoint = cluster.out / f"checkpoint-{tag}"
    wait_for(checkpoint.exists, 15, interval=0.05, what="the task to stop")
    stopped = float(checkpoint.read_text().split()[1])
    return stopped - cluster.store.get(result.id).revoked_at.timestamp()


def assert_no_database_error(worker) -> None:
    bad = [line for line in worker.output().splitlines() if DB_ERROR.search(line)]
    assert not bad, "\n".join(bad[:10])


# ------------------------------------------------------------------ workers


def test_sync_heavy_run_through_pgbouncer_logs_no_database_error(cluster_factory, celery_app, pgbouncer) -> None:
    cluster = cluster_factory("postgresql", worker_url=functools.partial(via, TRANSACTION_PORT),
                              revstore_sync_interval=0.2, revstore_cleanup_interval=1)
    # the start-up load: an id with a newline takes the streamed path (a named server-side cursor)
    cluster.store.add([f"pre-{i}" for i in range(2000)] + ["line\nbreak"])
    cluster.store.add(["expires-soon"], expires=1)
    workers = [cluster.worker(name) for name in "abc"]
    for w in workers:
        w.start(wait=False)
    for w in workers:
        w.wait_ready()

    pooled = {**cluster.env}
    app = Celery("writer", broker=BROKER, set_as_current=False)
    app.conf.revstore_url, app.conf.revstore_schema = cluster.env["REVSTORE_URL"], cluster.store.tables.schema
    ids = []
    for i in range(4):
        ids += [f"cli-{i}", f"api-{i}", f"stock-{i}"]
        cli(pooled, "revoke", f"cli-{i}", f"gone-{i}", "--reason", "load")
        cli(pooled, "restore", f"gone-{i}")
        client.revoke(app, f"api-{i}")  # client API: table, then broadcast
        celery_app.app.control.revoke(f"stock-{i}")  # stock broadcast: every worker writes it through
    for w in workers:
        wait_for(lambda w=w: set(ids) | {"pre-7", "line\nbreak"} <= revoked_on(celery_app.app, w), 20,
                 what=f"{w.name} to hold every revocation")
    assert not {f"gone-{i}" for i in range(4)} & revoked_on(celery_app.app, workers[0])
    wait_for(lambda: cluster.store.get("expires-soon") is None, 15, what="a worker's cleanup")
    assert cluster.store.get("stock-3").revoked_by  # written through by a worker
    polled = {w.name: status(celery_app, w, timeout=3)["polls"] for w in workers}
    for w in workers:  # ten more polls each: a repeated probe warning would show by now
        wait_for(lambda w=w: status(celery_app, w, timeout=3)["polls"] >= polled[w.name] + 10, 20,
                 what=f"{w.name} to poll ten more times")

    for w in workers:
        assert_no_database_error(w)
        # LISTEN through the transaction pooler hears nothing: found out, said once
        assert w.output().count("did not hear its probe notification") == 1, w.output()[-2000:]
        state = status(celery_app, w, timeout=3)
        assert state["listener_live"] is False and "probe" in state["listener_problem"]
        assert state["poll_interval"] == 0.2


def test_table_only_revoke_stops_a_task_behind_pgbouncer(cluster_factory, celery_app, pgbouncer) -> None:
    cluster = cluster_factory("postgresql", worker_url=functools.partial(via, TRANSACTION_PORT))
    default = cluster.worker("default")  # default settings: the deaf listener leaves the 5 s poll
    waking = cluster.worker("waking", REVSTORE_SYNC_INTERVAL="60")  # only a broker wake-up is fast
    for w in (default, waking):
        w.start(wait=False)
    for w in (default, waking):
        w.wait_ready()

    polled = stop_graceful_task(cluster, celery_app, default)
    print(f"table-only revoke -> graceful stop, default settings behind PgBouncer: {polled:.2f} s")
    assert polled < 6.0
    assert status(celery_app, default, timeout=3)["poll_interval"] == 5.0

    woken = stop_graceful_task(cluster, celery_app, waking, env={"CELERY_BROKER_URL": BROKER})
    print(f"table-only revoke + broker wake-up (CELERY_BROKER_URL, no app, poll 60 s) -> graceful stop: {woken:.2f} s")
    assert woken < 1.5
    for w in (default, waking):
        assert_no_database_error(w)


def test_listen_url_direct_stops_a_task_within_a_second_and_a_half(cluster_factory, celery_app, pgbouncer) -> None:
    cluster = cluster_factory("postgresql", worker_url=functools.partial(via, TRANSACTION_PORT))
    worker = cluster.worker("a", REVSTORE_LISTEN_URL=PG_BASE).start()
    wait_for(lambda: status(celery_app, worker, timeout=3).get("listener_live"), 15, what="the direct listener")

    latency = stop_graceful_task(cluster, celery_app, worker)
    print(f"table-only revoke -> graceful stop, LISTEN direct, rest through PgBouncer: {latency:.2f} s")
    assert latency < 1.5
    assert "listening for changes" in worker.output()
    assert_no_database_error(worker)
    # the connections revstore holds, by role and application name
    stats = cli(cluster.env, "stats")
    assert re.search(r"connections: .*postgres/revstore-listener=\d", stats), stats


def test_listener_that_stops_hearing_falls_back_to_polling(cluster_factory, celery_app, pgbouncer) -> None:
    from proxy import PgProxy

    proxy = PgProxy(parse=True)
    try:
        cluster = cluster_factory("postgresql", worker_url=functools.partial(via, TRANSACTION_PORT))
        worker = cluster.worker("a", REVSTORE_LISTEN_URL=proxy.url(PG_BASE) + "?sslmode=disable",
                                REVSTORE_LISTEN_CHECK_INTERVAL="2").start()
        wait_for(lambda: status(celery_app, worker, timeout=3).get("listener_live"), 15, what="the listener")
        assert status(celery_app, worker, timeout=3)["poll_interval"] == 30.0

        proxy.drop_notifications = True  # the connection lives on; NOTIFY never arrives
        dropped = time.monotonic()
        wait_for(lambda: status(celery_app, worker, timeout=3).get("listener_live") is False, 15, what="the worker to notice")
        noticed = time.monotonic() - dropped
        print(f"notifications dropped -> worker polls again after {noticed:.1f} s (check every 2 s + 3 s probe)")
        assert noticed < 8
        state = status(celery_app, worker, timeout=3)
        assert state["poll_interval"] == 5.0 and "probe" in state["listener_problem"]
        assert "did not hear its probe notification" in worker.output()

        cluster.store.add(["while-deaf"])  # reaches the worker by polling
        wait_for(lambda: "while-deaf" in revoked_on(celery_app.app, worker), 8, what="the poll to bring the revoke")

        proxy.drop_notifications = False
        wait_for(lambda: status(celery_app, worker, timeout=3).get("listener_live"), 15, what="the listener to recover")
        assert "listener reconnected" in worker.output()
        assert_no_database_error(worker)
    finally:
        proxy.close()


# -------------------------------------------------------- store, CLI, migrations


def _hammer(url: str, schema: str, n: int, out: "multiprocessing.Queue[list[str]]") -> None:
    store = RevocationStore(url, schema=schema)
    errors, marker = [], 0
    for i in range(120):
        try:
            if i % 10 == 0:
                store.add([f"h-{n}-{i}"])
                store.remove([f"h-{n}-{i - 5}"])
            marker = store.changes_since(marker).marker
            store.get_many([f"h-{n}-{i}", "x"])
            if i % 40 == 0:
                store.load_active()
                store.purge_expired(100)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
    store.dispose()
    out.put(errors)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_store_hammered_through_pgbouncer_prepares_nothing(mode, pgbouncer, request, pg_schema) -> None:
    url = pgbouncer if mode == "transaction" else request.getfixturevalue("session_pgbouncer")
    store = RevocationStore(url, schema=pg_schema)
    migrate.upgrade(store)
    store.add(["with\nnewline"])  # load_active streams through the named cursor
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(url, pg_schema, n, out)) for n in range(4)]
    for p in procs:
        p.start()
    errors = sum((out.get(timeout=120) for _ in procs), [])
    for p in procs:
        p.join(30)
    assert errors == [], errors[:5]
    store.dispose()


def test_prepared_statements_are_opt_in(pg_store) -> None:
    def prepared(store: RevocationStore) -> int:
        with store.engine.connect() as conn:
            for _ in range(3):
                conn.execute(text("SELECT count(*) FROM pg_class WHERE relname = 'x'"))
            return conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()

    assert prepared(pg_store) == 0
    opted = RevocationStore(PG_BASE, schema=pg_store.tables.schema, prepare_threshold=1)
    try:
        assert prepared(opted) > 0
    finally:
        opted.dispose()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_cli_and_migrations_through_pgbouncer(mode, pgbouncer, request, pg_schema, tmp_path) -> None:
    url = pgbouncer if mode == "transaction" else request.getfixturevalue("session_pgbouncer")
    env = {"REVSTORE_URL": url, "REVSTORE_SCHEMA": pg_schema}
    assert "is at" in cli(env, "db", "upgrade")
    cli(env, "revoke", "a", "b", "--terminate", "--reason", "pooled")
    cli(env, "restore", "a")
    listed = cli(env, "list")
    rows = [line.split("\t")[:2] for line in listed.splitlines()]
    assert ["b", "active"] in rows and not [r for r in rows if r[0] == "a"]
    assert "connections:" in cli(env, "stats")
    assert "downgraded" in cli(env, "db", "downgrade", "base")


def test_idle_worker_holds_one_connection_and_releases_it_after_the_idle_timeout(pg_store) -> None:
    from revstore.config import load_settings
    from revstore.memory import WorkerMemory
    from revstore.sync import RevocationSync

    settings = load_settings(conf={}, environ={}, revstore_url=PG_BASE, revstore_schema=pg_store.tables.schema,
                             revstore_sync_interval=3, revstore_pool_idle_timeout=1)
    store = RevocationStore.from_settings(settings)
    sync = RevocationSync(store, settings, WorkerMemory(), "idle@test")
    try:
        sync.load()
        pool = store.engine.pool
        assert pool.checkedin() == 1 and pool.checkedout() == 0  # one connection at rest
        sync.start()
        wait_for(lambda: pool.checkedin() == 0, 5, what="the idle connection to be closed")
        wait_for(lambda: sync.last_sync_ok is not None, 10, what="the next poll")
        assert pool.checkedin() <= 1
        wait_for(lambda: pool.checkedin() == 0, 5, what="the idle connection to be closed again")
    finally:
        sync.close()
        store.dispose()
