"""Celery's own unit tests pass with revstore active, exactly as they do stock.

The test files come from the sdist of the installed Celery (fetched with pip
once, cached under ``.cache/celery-suite``; the sdist's ``celery`` package is
left out so the installed one is tested).  They run twice: stock, then with
``tests/celery_suite/plugin.py``, which starts revstore's bootstep on SQLite
around every test and routes Celery's handler calls through revstore's
wrappers.  Every test must have the same outcome in both runs, and every id
and stamp Celery's handlers revoked must be committed or queued.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "celery-suite"
PLUGIN_DIR = Path(__file__).resolve().parent / "celery_suite"
FILES = [
    "t/unit/worker/test_control.py",
    "t/unit/worker/test_state.py",
    "t/unit/worker/test_request.py",
    "t/unit/worker/test_strategy.py",
    "t/unit/worker/test_worker.py",
    "t/unit/worker/test_consumer.py",
    "t/unit/app/test_control.py",
    "t/unit/utils/test_collections.py",
]


def celery_tests() -> Path:
    """Celery's test tree for the installed version, without its ``celery`` package."""
    release = version("celery")
    tree = CACHE / f"celery-{release}"
    if (tree / "t" / "unit" / "conftest.py").is_file():
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"celery-{release}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        f"celery=={release}", "--no-binary", ":all:", "--no-deps", "-d", str(CACHE)],
                       check=True, timeout=300)
    prefix = f"celery-{release}/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith((prefix + "t/", prefix + "pyproject.toml", prefix + "setup.cfg"))]
        tar.extractall(CACHE, members=members, filter="data")
    return tree


def outcomes(junit: Path) -> Counter[tuple[str, str]]:
    result: Counter[tuple[str, str]] = Counter()
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed")
        result[(name, outcome)] += 1
    return result


def start_suite(tree: Path, out: Path, plugin: bool) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVSTORE_", "CELERY_"))}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={out}.xml", *FILES]
    if plugin:
        env["PYTHONPATH"] = str(PLUGIN_DIR)
        env["REVSTORE_SUITE_REPORT"] = f"{out}.json"
        args[3:3] = ["-p", "plugin"]
    with open(f"{out}.log", "w") as log:
        return subprocess.Popen(args, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish_suite(proc: subprocess.Popen[str], out: Path, started: float) -> Counter[tuple[str, str]]:
    proc.wait(timeout=1500)
    output = Path(f"{out}.log").read_text(errors="replace")
    assert Path(f"{out}.xml").is_file(), output[-5000:]
    print(f"{out.name}: {output.strip().splitlines()[-1]} ({time.monotonic() - started:.0f}s)")
    return outcomes(Path(f"{out}.xml"))


@pytest.mark.timeout(1800)
def test_celerys_own_tests_have_the_same_outcome_with_revstore_active(tmp_path: Path) -> None:
    tree = celery_tests()
    started = time.monotonic()  # both runs at once: separate processes, separate databases
    runs = {name: start_suite(tree, tmp_path / name, plugin=name == "revstore") for name in ("stock", "revstore")}
    stock, active = (finish_suite(proc, tmp_path / name, started) for name, proc in runs.items())

    assert sum(stock.values()) > 500  # the files were collected and ran
    differences = sorted((stock - active) + (active - stock))
    assert differences == [], f"outcomes that differ from stock Celery {version('celery')}: {differences}"

    report = json.loads((tmp_path / "revstore.json").read_text())
    print(f"revstore active in {report['tests']} tests; Celery's handlers revoked "
          f"{report['ids']} ids and {report['stamps']} stamps, all committed or queued")
    assert report["tests"] > 500
    assert report["ids"] > 0 and report["stamps"] > 0
    assert report["missing"] == []
