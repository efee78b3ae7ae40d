"""Run the real ``revstore`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def revstore(*args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 120) -> Result:
    """``revstore ARGS`` with REVSTORE_* cleared unless given in ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("REVSTORE_")}
    base.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "revstore.cli", *args],
        capture_output=True, text=True, env=base, cwd=cwd, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr, no traceback."""
    assert result.code != 0, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
