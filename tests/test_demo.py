"""The README's first command: ``revstore demo`` tells its story and passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def test_demo_passes_and_revoked_tasks_left_no_trace(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {**os.environ, "REVSTORE_URL": "postgresql://must-not-be-used@nowhere/x"}
    proc = subprocess.run([sys.executable, "-m", "revstore.cli", "demo", "--workdir", str(workdir)],
                          capture_output=True, text=True, env=env, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    ran = workdir / "ran"
    # what the tasks themselves left, independent of the demo's own verdict
    assert not (ran / "a-revoked-1.started").exists()
    assert not (ran / "a-revoked-2.started").exists()
    assert not (ran / "b-revoked.started").exists()
    assert (ran / "a-control.done").exists() and (ran / "b-control.done").exists()
    assert (ran / "a-long.started").exists() and not (ran / "a-long.done").exists()
    # the restarted worker A ran the control on its second life
    assert json.loads((ran / "a-control.done").read_text())["worker"].startswith("demo-a@")


def test_demo_refuses_to_wipe_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "revstore.cli", "demo", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "refusing to wipe" in proc.stdout
    assert (tmp_path / "precious.txt").read_text() == "keep me"
