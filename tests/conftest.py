"""Fixtures: real SQLite files, a fresh PostgreSQL schema and a fresh MariaDB database per test.

PostgreSQL at 127.0.0.1:5432 and MariaDB at 127.0.0.1:3306 are required: if
one cannot be reached the tests fail (``.ci/services`` starts them first);
they never skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

# Under pytest-xdist (``make test`` runs the main suite in two processes, see
# noxfile.py) each process has a broker of its own, so that no process's
# broadcasts reach the other's workers: TEST_BROKERS lists them, one per
# process.  Set before harness reads TEST_BROKER; the workers inherit it.
if os.environ.get("TEST_BROKERS") and os.environ.get("PYTEST_XDIST_WORKER"):
    _shard = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))
    os.environ["TEST_BROKER"] = os.environ["TEST_BROKERS"].split(",")[_shard]

from harness import (
    BROKER_URL, LATER_RELEASE, MYSQL_BASE, MYSQL_PORT, PG_BASE, PG_HOST, PG_PORT, REDIS_URL, Cluster, make_store,
)
from revstore import migrate
from revstore.config import default_state_dir, normalize_url
from revstore.store import RevocationStore

#: what each ``backend`` parameter stands for
BACKENDS = ("sqlite", "postgresql", "mariadb")

#: Fixtures that start real ``celery worker`` processes: a test using one is a worker test.
WORKER_FIXTURES = {"cluster_factory", "pools"}
#: Worker tests about the database side (pooler, grants, outages), a browser, or
#: revstore's own releases (the two-release test builds 0.1.0 into a shared cache,
#: which two runs at once must not both write), or the randomized checker (two
#: minutes, PgBouncer and proxies): not about Celery, Python or the
#: broker, so the main combination runs them once, as it runs the SQLite and
#: MariaDB variants (the matrix uses PostgreSQL).
MAIN_ONLY_MODULES = {"test_pgbouncer", "test_least_privilege", "test_reliability", "test_web_browser", "test_upgrade",
                     # the console's /metrics and `revstore check`: operator tooling over the broadcast the
                     # rest of the matrix already covers on every broker and Celery
                     "test_metrics", "test_check", "test_checker"}


#: The user's own state folder (revstore_state_dir's default), as it was before the tests.
USER_STATE_DIR = default_state_dir(os.environ)


def _user_state_files() -> set[Path]:
    return set(USER_STATE_DIR.rglob("*")) if USER_STATE_DIR.is_dir() else set()


def pytest_configure(config: pytest.Config) -> None:
    """Every worker the tests start, and every test that leaves the default folder, gets a temporary state folder.

    ``XDG_STATE_HOME`` moves ``revstore_state_dir``'s default, and worker
    processes inherit it, so nothing the tests run writes to the user's folder.
    """
    if not hasattr(config, "workerinput"):
        config.stash[_STATE_BEFORE] = _user_state_files()
        folder = tempfile.mkdtemp(prefix="revstore-test-state-")
        config.stash[_STATE_HOME] = folder
        os.environ["XDG_STATE_HOME"] = folder


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any test wrote to the user's own state folder."""
    config = session.config
    if _STATE_BEFORE not in config.stash:
        return
    shutil.rmtree(config.stash[_STATE_HOME], ignore_errors=True)
    made = _user_state_files() - config.stash[_STATE_BEFORE]
    if made:
        print(f"\nrevstore tests left {len(made)} files in the user's state folder {USER_STATE_DIR}, e.g. "
              f"{sorted(made)[0]}: a test must use a temporary folder")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STATE_BEFORE = pytest.StashKey[set[Path]]()
_STATE_HOME = pytest.StashKey[str]()


def _utf8(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udcff``: they cannot be encoded as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Reports that can cross a process boundary.

    Some tests revoke ids Celery accepts that hold lone surrogates (odd
    input, as stock takes it), and their captured logs print them; under
    pytest-xdist (``make test``) a report travels to the controller as
    UTF-8, and one such character ended the whole run.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    report.sections = [(title, _utf8(text)) for title, text in report.sections]
    if report.longrepr is not None:
        shown = str(report.longrepr)
        if _utf8(shown) != shown:
            report.longrepr = _utf8(shown)


#: (test id, why it failed) of each rerun, printed at the end of the run
RERUN_REASONS: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep why a test was rerun: pytest-rerunfailures names it (``-rR``) but drops its failure."""
    if report.outcome == "rerun":
        RERUN_REASONS.append((report.nodeid, str(report.longrepr)[-4000:]))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each rerun's failure, so that a test that needs reruns can be fixed instead of tolerated."""
    for nodeid, reason in RERUN_REASONS:
        terminalreporter.write_sep("-", f"rerun: {nodeid}")
        terminalreporter.write_line(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that run real workers ``worker`` (the CI matrix runs them on every
    combination) and the worker tests that need to run only once ``main_only``."""
    for item in items:
        if WORKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.worker)
            callspec = getattr(item, "callspec", None)
            other_database = callspec is not None and callspec.params.get("backend", "postgresql") != "postgresql"
            if other_database or (item.module is not None and item.module.__name__ in MAIN_ONLY_MODULES):
                item.add_marker(pytest.mark.main_only)


def admin_engine(url: str, server: str) -> Iterator[Engine]:
    """An autocommit engine on ``url``; the tests fail (never skip) if the server does not answer."""
    # pre-ping: a pooled connection another test run terminated (pg_terminate_backend) is replaced
    engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # a missing server is a failure, never a skip
        pytest.fail(f"{server} is required at {url}: {exc}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_admin_engine() -> Iterator[Engine]:
    yield from admin_engine(PG_BASE, "PostgreSQL")


@pytest.fixture
def pg_schema(pg_admin_engine) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    for attempt in range(5):  # a worker still writing may make PostgreSQL pick the DROP as a deadlock victim
        try:
            with pg_admin_engine.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            return
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == 4:
                raise


@pytest.fixture(scope="session")
def mysql_admin_engine() -> Iterator[Engine]:
    yield from admin_engine(MYSQL_BASE, "MariaDB")


@pytest.fixture
def mysql_database(mysql_admin_engine) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A new, empty MariaDB database (MySQL has no schemas inside one): dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with mysql_admin_engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    yield name
    with mysql_admin_engine.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'revstore.sqlite3'}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> RevocationStore:
    """A migrated store on SQLite, PostgreSQL or MariaDB (each test runs on all three)."""
    return make_store(backend, request)


@pytest.fixture
def pg_store(request: pytest.FixtureRequest) -> RevocationStore:
    return make_store("postgresql", request)


@pytest.fixture(scope="session")
def redis_ready() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception as exc:  # a missing broker is a failure, never a skip
        pytest.fail(f"Redis is required at {REDIS_URL}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def broker_ready(redis_ready) -> None:  # type: ignore[no-untyped-def]
    """The worker tests' broker (Redis, or RabbitMQ with TEST_BROKER=amqp://...) answers."""
    from kombu import Connection

    try:
        with Connection(BROKER_URL, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.5)
    except Exception as exc:  # a missing broker is a failure, never a skip
        pytest.fail(f"the broker is required at {BROKER_URL}: {exc}", pytrace=False)


@pytest.fixture
def celery_app(broker_ready):  # type: ignore[no-untyped-def]
    """The test app, as a client: sends tasks and control messages."""
    import workerapp

    return workerapp


@pytest.fixture
def pg_proxy():  # type: ignore[no-untyped-def]
    from proxy import PgProxy

    proxy = PgProxy()
    yield proxy
    proxy.close()


@pytest.fixture
def db_proxy(backend: str):  # type: ignore[no-untyped-def]
    """A proxy in front of the ``backend`` server (PostgreSQL or MariaDB), to cut workers off it."""
    from proxy import TcpProxy

    proxy = TcpProxy((PG_HOST, MYSQL_PORT if backend == "mariadb" else PG_PORT))
    yield proxy
    proxy.close()


@pytest.fixture
def cluster_factory(tmp_path, request, broker_ready):  # type: ignore[no-untyped-def]
    """Build a Cluster of real workers on a migrated store of the given backend."""

    def make(backend: str = "postgresql", worker_url=None, **settings):  # type: ignore[no-untyped-def]
        """``worker_url(url)`` may rewrite the URL the workers get (a proxy, a role)."""
        store = make_store(backend, request)
        url = store.url.render_as_string(hide_password=False)
        if worker_url is not None:
            url = worker_url(url)
        cluster = Cluster(tmp_path, url, store.tables.schema, **settings)
        cluster.store = store  # type: ignore[attr-defined]
        # Finalizers run last-in first-out: workers stop before their
        # database schema is dropped (else they log missing-table warnings).
        request.addfinalizer(cluster.close)
        return cluster

    return make


LATER = '''"""A later release's {phase} step (test only)."""
import sqlalchemy as sa
from alembic import context, op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None
phase = "{phase}"
release = "{release}"
oldest_release = "{oldest}"


def _name():
    tables = context.config.attributes["revstore_tables"]
    return tables.prefix + "later", tables.schema


def upgrade():
    name, schema = _name()
    {up}


def downgrade():
    name, schema = _name()
    {down_body}
'''


@pytest.fixture
def later_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This package's migrations plus the next release's: an expand step, then a contract step."""
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = migrate.head_revision()
    create = 'op.create_table(name, sa.Column("id", sa.Integer, primary_key=True), schema=schema)'
    drop = "op.drop_table(name, schema=schema)"
    oldest = migrate.chain().head.oldest_release
    (scripts / "versions" / "0901_later_expand.py").write_text(LATER.format(
        rev="0901", down=head, phase="expand", release=LATER_RELEASE, oldest=oldest, up=create, down_body=drop))
    (scripts / "versions" / "0902_later_contract.py").write_text(LATER.format(
        rev="0902", down="0901", phase="contract", release=LATER_RELEASE, oldest=LATER_RELEASE, up=drop,
        down_body=create))
    monkeypatch.setattr(migrate, "migrations_dir", lambda: scripts)
    return scripts


#: Debian's chromium and its driver (.ci/services installs them)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless chromium through selenium, for the console and the docs site; a missing browser fails, never skips."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(binary):
            pytest.fail(f"{binary} is required (apt-get install chromium chromium-driver; .ci/services does)",
                        pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--ignore-certificate-errors",  # the test nginx's self-signed certificate
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
