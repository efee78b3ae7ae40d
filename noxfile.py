"""What CI runs (``.ci/run`` -> ``make test`` -> ``nox``): the supported range, both brokers.

- ``main``: the Python of ``.venv`` (3.11) with the latest dependencies, in
  ``.venv`` itself: the whole suite on Redis, then the worker tests on RabbitMQ.
- ``oldest``: Python 3.10 with the lowest versions ``pyproject.toml`` allows;
  ``newest``: Python 3.13 with the latest release of each.  Both run the
  worker tests on Redis and on RabbitMQ.
- ``docs``: ``mkdocs build --strict``.

Worker tests are the ones marked ``worker`` (every test using the
``cluster_factory`` fixture is marked automatically, see tests/conftest.py),
minus those marked ``main_only`` (load and scale, PgBouncer, grants, database
outages, the browser: nothing there depends on Celery, Python or the broker,
so they run once, in ``main``; see MAIN_ONLY_MODULES in tests/conftest.py).  Virtualenvs live in ``.nox/``
and are reused between runs; pip keeps its download cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["main", "oldest", "newest", "docs"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

#: Each session's brokers: a Redis database and a RabbitMQ vhost of its own
#: (.ci/services creates the vhosts), since ``make test`` runs main beside the
#: range sessions (.ci/test) and no run's broadcasts may reach another's workers.
BROKERS = {
    # main's whole suite runs in two processes: the second one's Redis database is in MAIN_SHARDS
    "main": {"redis": "redis://127.0.0.1:6379/5", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"},
    "oldest": {"redis": "redis://127.0.0.1:6379/13", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/revstore-oldest"},
    "newest": {"redis": "redis://127.0.0.1:6379/14", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/revstore-newest"},
}
WORKER_TESTS = ["-m", "worker and not main_only"]
#: The main run's whole suite in two pytest-xdist processes, a file at a time:
#: the suite mostly waits on real workers and servers, and alone it was the
#: critical path (27 of CI's 28 minutes, while the range sessions were done at
#: 16).  Each process has a Redis database of its own (tests/conftest.py).
MAIN_SHARDS = ["redis://127.0.0.1:6379/5", "redis://127.0.0.1:6379/4"]
SPLIT = ["-n", str(len(MAIN_SHARDS)), "--dist", "loadfile"]
#: Real workers on a 2-core machine: a test that fails on a timing margin gets
#: two more tries, and the log names every rerun (pytest -r R), so flaky tests
#: stay visible instead of failing CI at random.
RERUNS = ["--reruns", "2", "--reruns-delay", "2", "-raPR"]
#: where CI's time goes, in every log
DURATIONS = ["--durations", "25"]

#: The floor of every promise in pyproject.toml (and the kombu Celery 5.3.0 shipped with).
OLDEST_PINS = [
    "celery==5.3.0",
    "kombu==5.3.0",
    "sqlalchemy==2.0.0",
    "alembic==1.12.0",
    "psycopg[binary]==3.1.0",
    "click==8.1.2",  # celery 5.3.0 needs >= 8.1.2 (pyproject says >= 8.1)
]


def _pyenv_python(version: str) -> str:
    """The pyenv interpreter of this exact version (CI machines provide them with pyenv)."""
    root = os.environ.get("PYENV_ROOT") or subprocess.run(
        ["pyenv", "root"], capture_output=True, text=True, check=False
    ).stdout.strip() or str(Path.home() / ".pyenv")
    return str(Path(root) / "versions" / version / "bin" / "python")


OLDEST_PYTHON = _pyenv_python("3.10.13")
NEWEST_PYTHON = _pyenv_python("3.13.0")


def _pytest(session: nox.Session, python: str, runs: list[tuple[str, list[str]]],
            env: dict[str, str] | None = None) -> None:
    """One pytest per (broker, arguments), all at once; every log is printed, then failures fail the session.

    The runs mostly wait on real workers and servers, so side by side they
    take little longer than the longest alone (CI has 30 minutes on 2
    cores).  Each run has its own broker (BROKERS), so no run's
    broadcasts reach another run's workers.
    """
    brokers = [broker for broker, _ in runs]
    assert len(set(brokers)) == len(brokers), "concurrent runs need a broker each"
    executable = python if os.path.isabs(python) else os.path.join(session.bin, python)
    procs = []
    for broker, args in runs:
        log = tempfile.TemporaryFile()
        command = [executable, "-m", "pytest", *RERUNS, *DURATIONS, *args, *session.posargs]
        session.log(f"{broker}: {' '.join(command)}")
        run_env = {**os.environ, **(env or {}), "TEST_BROKER": BROKERS[session.name][broker]}
        procs.append((broker, args, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=run_env)))
    failed = []
    for broker, args, log, proc in procs:
        code = proc.wait()
        log.seek(0)
        print(f"\n===== {session.name}: pytest on {broker} {' '.join(args) or '(whole suite)'} =====", flush=True)
        sys.stdout.buffer.write(log.read())  # bytes: a test may print anything
        sys.stdout.flush()
        log.close()
        if code:
            failed.append(f"{broker} {' '.join(args) or '(whole suite)'} (exit {code})")
    if failed:
        session.error("failed: " + "; ".join(failed))


VERSIONS = """
import sys
from importlib.metadata import version
names = ["celery", "kombu", "sqlalchemy", "alembic", "psycopg", "redis", "amqp"]
print("python", sys.version.split()[0], *(f"| {n} {version(n)}" for n in names))
"""


def _versions(session: nox.Session, python: str) -> None:
    """Log what this combination really runs (for the CI log and the README table)."""
    session.log(session.run(python, "-c", VERSIONS, external=True, silent=True).strip())


@nox.session(venv_backend="none")
def main(session: nox.Session) -> None:
    """Everything on Redis, then the worker tests on RabbitMQ (in .venv)."""
    _versions(session, sys.executable)
    _pytest(session, sys.executable, [("redis", SPLIT), ("rabbitmq", WORKER_TESTS)],
            env={"TEST_BROKERS": ",".join(MAIN_SHARDS)})


def _range_end(session: nox.Session, *install: str) -> None:
    session.install("-e", ".[test]", *install)
    _versions(session, "python")
    _pytest(session, "python", [(broker, WORKER_TESTS) for broker in BROKERS[session.name]])


@nox.session(python=OLDEST_PYTHON)
def oldest(session: nox.Session) -> None:
    """Python 3.10 with the oldest supported Celery, SQLAlchemy, Alembic and psycopg."""
    _range_end(session, *OLDEST_PINS)


@nox.session(python=NEWEST_PYTHON)
def newest(session: nox.Session) -> None:
    """Python 3.13 with the latest release of every dependency (upgraded on each run)."""
    _range_end(session, "--upgrade", "--upgrade-strategy", "eager")


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """The documentation builds without a warning."""
    with tempfile.TemporaryDirectory(prefix="revstore-site-") as site:
        session.run(sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", site, external=True)
