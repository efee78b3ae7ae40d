"""A wheel built from this checkout works on its own: migrations ship inside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from revstore._version import __version__

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_wheel_in_a_fresh_venv_runs_db_upgrade(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True, timeout=300,
    )
    wheel = next(dist.glob("revstore-*.whl"))
    assert wheel.name.startswith(f"revstore-{__version__}-"), wheel.name  # pyproject reads revstore/_version.py
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"{wheel}[postgres]"], check=True, timeout=400)

    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing can come from it
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVSTORE_", "PYTHON"))}
    env["REVSTORE_URL"] = f"sqlite:///{elsewhere / 'rs.sqlite3'}"
    exe = str(venv / "bin" / "revstore")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import revstore, revstore.migrate as m; print(m.migrations_dir())"],
        capture_output=True, text=True, cwd=elsewhere, env=env, check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where

    up = run("db", "upgrade")
    assert up.returncode == 0, up.stderr
    assert run("db", "check").returncode == 0
    assert run("revoke", "from-wheel").returncode == 0
    assert "from-wheel" in run("list").stdout
    assert "CREATE TABLE" in run("db", "sql").stdout


def test_the_version_is_written_once() -> None:
    """pyproject.toml reads revstore/_version.py, and the package's modules import it from there, not from
    ``revstore/__init__``, whose names exist only once its imports have run."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'path = "revstore/_version.py"' in pyproject
    assert not [line for line in pyproject.splitlines() if line.startswith("version")]
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "revstore").rglob("*.py")
                 if "from . import __version__" in path.read_text(encoding="utf-8")
                 or "from .. import __version__" in path.read_text(encoding="utf-8")]
    assert not offenders, offenders
