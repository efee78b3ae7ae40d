"""Issue 5: a database password never leaves revstore in clear text.

Trust authentication ignores the password, so every URL here carries one and
the worker still connects: each place a user can read (worker log,
``celery inspect conf``, ``celery report``, exceptions) is searched for it.
The CLI's output is covered in ``test_cli.py``.
"""

from __future__ import annotations

import subprocess
import traceback
from typing import Any

import httpx
import pytest
from celery import Celery
from celery.app.utils import bugreport
from sqlalchemy.engine import make_url

import revstore
from console_server import ConsoleServer
from harness import CELERY, TESTS
from revstore import config
from revstore.censoring import named_like_secret
from revstore.config import load_settings
from revstore.errors import RevstoreError
from revstore.localstate import identity
from revstore.store import RevocationStore

SECRET = "S3cretPassw0rdXyz"

#: The settings that cannot carry a credential, and why.  Every other setting
#: in the settings table must show none in any censored view, so a setting
#: added later fails the test below until the rule censors it or it is named
#: here on purpose.
PLAIN = {
    "revstore_schema": "a SQL identifier",
    "revstore_table_prefix": "a SQL identifier's prefix",
    "revstore_web_user": "a user name, shown as a URL's user is",
    "revstore_state_dir": "a folder",
    **{name: "a number or a boolean" for name in (
        "revstore_sync_interval", "revstore_default_expires", "revstore_cleanup_interval", "revstore_cleanup_batch",
        "revstore_tombstone_ttl", "revstore_audit_ttl", "revstore_start_without_db", "revstore_listen", "revstore_snapshot_max_age",
        "revstore_state_ttl",
        "revstore_listen_check_interval", "revstore_pool_size", "revstore_pool_max_overflow",
        "revstore_pool_idle_timeout", "revstore_prepare_threshold")},
}

#: Ways a value can carry SECRET: bare, as a URL's password (parseable or
#: not), as a query parameter libpq and the MySQL drivers read.
CARRIERS = [
    SECRET,
    f"postgresql://u:{SECRET}@db:5432/app",
    f"postgresql://u:{SECRET}@db:notaport/app",
    f"postgresql://u@db/app?sslmode=disable&password={SECRET}",
    f"mysql://u@db/app?passwd={SECRET}",
    make_url(f"postgresql+psycopg://u:{SECRET}@db/app"),
]


def with_password(url: str) -> str:
    """Trust authentication ignores it; libpq reads a ``password`` query parameter too."""
    return url.replace("postgres@", f"postgres:{SECRET}@") + f"?password={SECRET}"


def test_worker_log_inspect_conf_and_report_hide_the_password(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql", worker_url=with_password)
    url = cluster.env["REVSTORE_URL"]
    assert SECRET in url
    # the settings, not just the environment: that is what `inspect conf` and `report` print
    settings = {"TEST_REVSTORE_URL": url, "TEST_REVSTORE_LISTEN_URL": url}
    worker = cluster.worker("a", **settings).start()

    conf = celery_app.app.control.inspect([worker.nodename], timeout=3).conf(with_defaults=False) or {}
    shown = conf.get(worker.nodename) or {}
    assert "revstore_url" in shown and "revstore_listen_url" in shown, shown.keys()
    assert SECRET not in repr(shown)

    report = subprocess.run(CELERY + ["-A", "workerapp", "report"], cwd=TESTS, env={**cluster.env, **settings},
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "revstore_listen_url" in report.stdout and SECRET not in report.stdout + report.stderr

    status = celery_app.app.control.inspect([worker.nodename], timeout=3).revstore_status() or {}
    assert status.get(worker.nodename, {}).get("loaded") is True
    assert SECRET not in repr(status)
    worker.stop()
    assert "revstore: listening for changes" in worker.output() and SECRET not in worker.output()


@pytest.mark.parametrize("url", [
    f"postgresql://revstore:{SECRET}@127.0.0.1:1/app",   # nothing listens on port 1
    f"postgresql://revstore:{SECRET}@127.0.0.1:notaport/app",
])
def test_errors_and_reprs_hide_the_password(url: str) -> None:
    with pytest.raises(RevstoreError) as caught:
        RevocationStore.from_settings(load_settings(environ={"REVSTORE_URL": url})).ping()
    rendered = "".join(traceback.format_exception(caught.value))
    assert "revstore:" in str(caught.value)
    assert SECRET not in rendered


def test_plain_names_only_settings_that_exist() -> None:
    assert set(PLAIN) <= set(config.ENV), set(PLAIN) - set(config.ENV)


def test_the_table_marks_exactly_the_secrets_and_never_contradicts_the_rule_on_names() -> None:
    assert {e.name for e in config.TABLE if not e.secret} == set(PLAIN)
    assert not [e.name for e in config.TABLE if named_like_secret(e.name) and not e.secret]


@pytest.mark.parametrize("name", sorted(set(config.ENV) - set(PLAIN)))
@pytest.mark.parametrize("value", CARRIERS, ids=range(len(CARRIERS)))
def test_no_censored_view_shows_a_credential_of_any_setting(name: str, value: Any) -> None:
    """Every place Celery and revstore show configuration to people, for every setting that can carry one."""
    app = Celery("secrets", broker="memory://", set_as_current=False)
    revstore.install(app)
    app.conf[name] = value
    views = [
        app.conf.humanize(censored=True),
        app.conf.humanize(with_defaults=True, censored=True),  # `celery report`
        repr(app.conf.table(censored=True)),  # `celery inspect conf`
        repr(app.conf.table(with_defaults=True, censored=True)),
        bugreport(app),
        config.censor(name, value),
    ]
    try:
        views.append(repr(load_settings(conf={name: value}, environ={})))
    except RevstoreError as exc:
        views.append("".join(traceback.format_exception(exc)))
    assert name in views[0]
    assert not [view for view in views if SECRET in str(view)]
    if isinstance(value, str):  # (a URL object masks itself)
        assert SECRET in app.conf.humanize(censored=False)  # the views above had it to hide


def test_urls_keep_their_host_and_lose_every_password() -> None:
    shown = config.mask_url(f"postgresql://u:{SECRET}@db:5432/app?sslmode=disable&password={SECRET}")
    assert shown == "postgresql://u:***@db:5432/app?password=***&sslmode=disable"


def test_console_status_and_local_files_hide_a_password_in_the_url_and_its_query(pg_store) -> None:
    url = pg_store.url.set(password=SECRET, query={"password": SECRET})
    store = RevocationStore(url, schema=pg_store.tables.schema)
    try:
        assert store.stats()["database"].endswith("password=***") and SECRET not in repr(store.stats())
        assert SECRET not in identity(store)  # written into the worker's snapshot file
        server = ConsoleServer(store)
        try:
            page = httpx.get(server.url + "/")
            assert page.status_code == 200 and "postgresql" in page.text and SECRET not in page.text
        finally:
            server.close()
    finally:
        store.dispose()
