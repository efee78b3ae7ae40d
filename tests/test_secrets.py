"""Issue 5: a database password never leaves revstore in clear text.

Trust authentication ignores the password, so every URL here carries one and
the worker still connects: each place a user can read (worker log,
``celery inspect conf``, ``celery report``, exceptions) is searched for it.
The CLI's output is covered in ``test_cli.py``.
"""

from __future__ import annotations

import subprocess
import traceback

import pytest

from harness import CELERY, TESTS
from revstore.config import load_settings
from revstore.errors import RevstoreError
from revstore.store import RevocationStore

SECRET = "S3cretPassw0rdXyz"


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{SECRET}@")


def test_worker_log_inspect_conf_and_report_hide_the_password(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql", worker_url=with_password)
    url = cluster.env["REVSTORE_URL"]
    assert SECRET in url
    # the setting, not just the environment: that is what `inspect conf` and `report` print
    worker = cluster.worker("a", TEST_REVSTORE_URL=url).start()

    conf = celery_app.app.control.inspect([worker.nodename], timeout=3).conf(with_defaults=False) or {}
    shown = conf.get(worker.nodename) or {}
    assert "revstore_url" in shown, shown.keys()
    assert SECRET not in repr(shown)

    report = subprocess.run(CELERY + ["-A", "workerapp", "report"], cwd=TESTS, env={**cluster.env, "TEST_REVSTORE_URL": url},
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "revstore_url" in report.stdout and SECRET not in report.stdout + report.stderr

    status = celery_app.app.control.inspect([worker.nodename], timeout=3).revstore_status() or {}
    assert status.get(worker.nodename, {}).get("loaded") is True
    assert SECRET not in repr(status)
    worker.stop()
    assert "revstore: loaded" in worker.output() and SECRET not in worker.output()


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
