"""Every code sample in the docs runs, so the docs cannot drift from the code.

What is executed, from ``docs/*.md`` and ``README.md``:

* every fenced ```` ```python ```` block, each in a fresh subprocess with a
  fresh temporary folder as its working directory.  Python samples must be
  self-contained (their own SQLite file, ``memory://`` broker, or the
  placeholder URLs below);
* every fenced ```` ```sh ```` block, in order, page by page: all the shell
  blocks of one page share one working folder and their exported variables
  (as consecutive steps of a terminal session would), each block runs in
  ``bash -euo pipefail`` and must exit 0.  Background processes a block
  starts (a worker with ``&``) are killed when the page is done.

Not executed, by convention: ```` ```text ````, ```` ```console ````,
```` ```sql ```` (the role blocks are run by the reliability tests),
```` ```toml ```` and every other language.  Use ```` ```text ```` for output
and for commands that need infrastructure we do not have here
(``pip install``, systemd units, a real production host).

Markers, an HTML comment on the line right before a fence:

* ``<!-- file: NAME -->``: the block is also saved as ``NAME`` in the page's
  shell folder at that point (``proj.py`` for the shell steps that follow).

Placeholders: samples are written for a reader's machine, and rewritten here:

* ``@localhost/app`` (a PostgreSQL URL) becomes a scratch database created
  for this run on the local server (``REVSTORE_TEST_PG``), dropped after;
* ``redis://localhost:6379/0`` becomes a Redis database no other test uses.

``REVSTORE_*`` and ``CELERY_*`` variables are removed from the environment,
and the virtualenv's ``bin`` is first on ``PATH`` (``revstore``, ``celery``,
``python``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PG_BASE = os.environ.get("REVSTORE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST = os.environ.get("REVSTORE_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")
#: Redis database of the docs' samples (the worker tests use 5 and 6).
REDIS_DB = os.environ.get("REVSTORE_DOCS_REDIS_DB", str(10 + uuid.uuid4().int % 6))
BLOCK_TIMEOUT = 45

FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>```+|~~~+)[ ]*(?P<info>[^\n`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<key>[a-z]+)\s*:\s*(?P<value>.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    file: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Fenced blocks of a page, with the marker comment right before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        lang = (match["info"].split() or [""])[0].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        marker = MARKER.match(lines[start - 1]) if start > 0 else None
        file = marker["value"] if marker and marker["key"] == "file" else None
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", file))
    return out


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL if b.lang in ("python", "py")]
SHELL_PAGES = sorted({b.page for b in ALL if b.lang == "sh"})


@pytest.fixture(scope="module")
def scratch_db() -> str:
    """A PostgreSQL database of its own, so samples may use the public schema."""
    name = f"revstore_docs_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a missing server is a failure, never a skip
        pytest.fail(f"PostgreSQL is required at {PG_BASE}: {exc}", pytrace=False)
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def rewrite(code: str, db: str) -> str:
    url = make_url(PG_BASE)
    host = f"@{url.host or '127.0.0.1'}:{url.port or 5432}/{db}"
    code = code.replace("@localhost/app", host)
    return code.replace("redis://localhost:6379/0", f"{REDIS_HOST}/{REDIS_DB}")


def sample_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVSTORE_", "CELERY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def report(block: Block, proc: subprocess.CompletedProcess[str]) -> str:
    return (f"sample {block.id} ({block.lang}) exited {proc.returncode}\n--- code\n{block.code}"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")


def test_the_docs_have_samples() -> None:
    """Guard the extractor itself: a regex slip must not make every test vanish."""
    assert len(PYTHON) >= 5 and len(SHELL_PAGES) >= 2, ([b.id for b in PYTHON], SHELL_PAGES)


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_sample_runs(block: Block, scratch_db: str, tmp_path: Path) -> None:
    script = tmp_path / "sample.py"
    script.write_text(rewrite(block.code, scratch_db), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=sample_env(),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert proc.returncode == 0, report(block, proc)


@pytest.mark.parametrize("page", SHELL_PAGES, ids=lambda p: p.name)
def test_shell_samples_run_in_order(page: Path, scratch_db: str, tmp_path: Path) -> None:
    state = tmp_path / ".exported"
    groups: list[int] = []
    env = sample_env()
    try:
        for block in blocks(page):
            code = rewrite(block.code, scratch_db)
            if block.file:
                (tmp_path / block.file).write_text(code, encoding="utf-8")
            if block.lang != "sh":
                continue
            wrapped = (f'if [ -f "{state}" ]; then source "{state}"; fi\n'
                       f"{code}\nexport -p > \"{state}\"\n")
            proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", wrapped], cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            groups.append(proc.pid)
            try:
                out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill(proc.pid)
                out, err = proc.communicate()
                err += f"\n(timed out after {BLOCK_TIMEOUT}s)"
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            assert proc.returncode == 0, report(block, done)
    finally:
        for pgid in groups:  # workers a block started in the background
            _kill(pgid)


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
