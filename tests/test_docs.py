"""Every code sample in the docs runs, so the docs cannot drift from the code.

What is executed, from ``docs/*.md`` and ``README.md``:

* every fenced ```` ```python ```` block, each in a fresh subprocess with a
  fresh temporary folder as its working directory.  Python samples must be
  self-contained (their own SQLite file, ``memory://`` broker, or the
  placeholder URLs below);
* every fenced ```` ```sh ```` block of ``docs/*.md``, in order, page by page: all the shell
  blocks of one page share one working folder and their exported variables
  (as consecutive steps of a terminal session would), each block runs in
  ``bash -euo pipefail`` and must exit 0.  Background processes a block
  starts (a worker with ``&``) are killed when the page is done.

Not executed, by convention: ```` ```text ````, ```` ```console ````,
```` ```sql ```` (the role blocks, whose first line is ``-- revstore: worker role``
or ``-- revstore: admin role``, are compared here with what ``revstore db grants``
prints; the least-privilege tests run that SQL),
```` ```toml ```` and every other language.  Use ```` ```text ```` for output
and for commands that need infrastructure we do not have here
(``pip install``, systemd units, a real production host).

Markers, an HTML comment on the line right before a fence:

* ``<!-- file: NAME -->``: the block is also saved as ``NAME`` in the page's
  shell folder at that point (``proj.py`` for the shell steps that follow).

Placeholders: samples are written for a reader's machine, and rewritten here:

* ``@localhost/app`` (a PostgreSQL URL) becomes a scratch database created
  for this run on the local server (``REVSTORE_TEST_PG``), dropped after;
* ``redis://localhost:6379/0`` becomes a Redis database (10 to 15) that no
  other test and no concurrent run of these samples uses.

``REVSTORE_*`` and ``CELERY_*`` variables are removed from the environment,
and the virtualenv's ``bin`` is first on ``PATH`` (``revstore``, ``celery``,
``python``).  Pages and Python samples are independent, so they all start at
once and the test takes as long as the slowest page (the quick start).

Also checked: ``docs/configuration.md`` names every setting, environment
variable and CLI command, its settings table is the one generated from the
code's (:mod:`revstore.settings_doc`), and ``mkdocs build --strict`` (run by ``make test``)
fails on a broken link or a page missing from ``nav`` (run here too, see
:func:`test_mkdocs_strict_build_passes`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from harness import PG_BASE, REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
REDIS_HOST = REDIS_URL.rstrip("/")
#: Redis databases the docs' samples may use (the worker tests' brokers are 5 and 4,
#: and 13 and 14 in the range sessions, see noxfile.py BROKERS): each run takes one
#: no concurrent run holds, see :func:`redis_db`.
REDIS_DBS = range(10, 13)
REDIS_DB = "10"
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
#: README.md's shell block is ``make demo`` / ``make test`` (the suite itself):
#: only its Python is run here; the demo has its own test.
SHELL_PAGES = sorted({b.page for b in ALL if b.lang == "sh" and b.page.name != "README.md"})


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
    assert len(PYTHON) >= 10 and len(SHELL_PAGES) >= 3, ([b.id for b in PYTHON], SHELL_PAGES)


@pytest.fixture(scope="module")
def redis_db() -> str:
    """A Redis database no concurrent run of these samples uses (a lock key in it)."""
    import redis

    global REDIS_DB
    token = uuid.uuid4().hex
    for db in REDIS_DBS:
        client = redis.Redis.from_url(f"{REDIS_HOST}/{db}")
        try:
            if client.set("revstore-docs-samples", token, nx=True, ex=600):
                break
        except Exception as exc:  # a missing broker is a failure, never a skip
            pytest.fail(f"Redis is required at {REDIS_HOST}: {exc}", pytrace=False)
    else:
        pytest.fail(f"every Redis database in {list(REDIS_DBS)} is held by another run of the docs samples")
    for key in client.scan_iter():  # a failed earlier run's queued messages
        if key != b"revstore-docs-samples":
            client.delete(key)
    REDIS_DB = str(db)
    yield REDIS_DB
    if client.get("revstore-docs-samples") == token.encode():
        for key in client.scan_iter():  # kombu's bindings; the lock last
            if key != b"revstore-docs-samples":
                client.delete(key)
        client.delete("revstore-docs-samples")
    client.close()


@pytest.fixture(scope="module")
def samples(scratch_db: str, redis_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """Start every sample at once (they are independent): the suite takes as long as the slowest page."""
    pool = ThreadPoolExecutor(max_workers=8)
    futures: dict[str, Future] = {}
    for page in SHELL_PAGES:
        futures[page.name] = pool.submit(run_page, page, scratch_db, tmp_path_factory.mktemp(page.stem))
    for block in PYTHON:
        futures[block.id] = pool.submit(run_python, block, scratch_db, tmp_path_factory.mktemp("py"))
    yield futures
    pool.shutdown(wait=True)


def run_python(block: Block, db: str, folder: Path) -> str | None:
    """None when the sample ran cleanly, else what to show."""
    script = folder / "sample.py"
    script.write_text(rewrite(block.code, db), encoding="utf-8")
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=folder, env=sample_env(),
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        return f"sample {block.id} timed out after {BLOCK_TIMEOUT}s\n{block.code}{exc.stdout}{exc.stderr}"
    return None if proc.returncode == 0 else report(block, proc)


def run_page(page: Path, db: str, folder: Path) -> str | None:
    """Run a page's shell blocks in order in ``folder``; None, or the first failure."""
    state = folder / ".exported"
    groups: list[int] = []
    env = sample_env()
    env["XDG_STATE_HOME"] = str(folder / ".state")  # workers' spool and snapshot: the default place, not $HOME
    try:
        for block in blocks(page):
            code = rewrite(block.code, db)
            if block.file:
                (folder / block.file).write_text(code, encoding="utf-8")
            if block.lang != "sh":
                continue
            wrapped = (f'if [ -f "{state}" ]; then source "{state}"; fi\n'
                       f"{code}\nexport -p > \"{state}\"\n")
            proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", wrapped], cwd=folder, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            groups.append(proc.pid)
            try:
                out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill(proc.pid)
                out, err = proc.communicate()
                err += f"\n(timed out after {BLOCK_TIMEOUT}s)"
            if proc.returncode != 0:
                return report(block, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return None
    finally:
        for pgid in groups:  # workers a block started in the background
            _kill(pgid)


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_sample_runs(block: Block, samples: dict[str, Future]) -> None:
    failure = samples[block.id].result()
    assert failure is None, failure


@pytest.mark.parametrize("page", SHELL_PAGES, ids=lambda p: p.name)
def test_shell_samples_run_in_order(page: Path, samples: dict[str, Future]) -> None:
    failure = samples[page.name].result()
    assert failure is None, failure


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_role_sql_in_the_docs_is_what_db_grants_prints() -> None:
    """The operations guide's role blocks must not drift from ``revstore db grants``."""
    from revstore.backends import for_dialect
    from revstore.backends.postgresql_roles import ADMIN_MARK, WORKER_MARK, admin_sql, worker_sql
    from revstore.schema import build_tables

    blocks = [b.code for b in ALL if b.lang == "sql" and b.code.startswith("-- revstore:")]
    # MySQL's accounts are users (CREATE USER), PostgreSQL's roles (CREATE ROLE)
    mysql = [code for code in blocks if "CREATE USER" in code]
    sql = {code.splitlines()[0].split(" (")[0]: code for code in blocks if code not in mysql}
    tables = build_tables("revstore_", None)
    assert sql.get(ADMIN_MARK) == admin_sql(tables), sql.get(ADMIN_MARK)
    assert sql.get(WORKER_MARK) == worker_sql(tables), sql.get(WORKER_MARK)
    assert mysql == [for_dialect("mysql").role_sql(tables, "revstore_admin", "revstore_worker", create_role=True)]


def test_configuration_page_lists_every_setting_and_command() -> None:
    """A new setting or CLI command must come with its documentation."""
    import click

    from revstore.cli import main_group
    from revstore.config import ENV

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [name for pair in ENV.items() for name in pair if f"`{name}`" not in page]
    commands: list[str] = []
    for name, command in main_group.commands.items():
        if isinstance(command, click.Group):
            commands += [f"{name} {sub}" for sub in command.commands]
        else:
            commands.append(name)
    missing += [c for c in commands if f"| `{c}" not in page]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_settings_table_in_the_docs_is_generated_from_the_code() -> None:
    """Names, variables, kinds, bounds and defaults of the docs' table are the code's (revstore.config.TABLE)."""
    from revstore import settings_doc

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_doc.current(page) == settings_doc.markdown(), (
        "docs/configuration.md's settings table is stale: run `python -m revstore.settings_doc docs/configuration.md`")


def test_a_broken_sample_fails(tmp_path: Path) -> None:
    """The runner must report failures, not swallow them."""
    page = tmp_path / "broken.md"
    page.write_text("```python\nraise SystemExit(3)\n```\n\n```sh\ntrue\n```\n\n```sh\nfalse\necho never\n```\n")
    python, first, second = blocks(page)
    assert "exited 3" in (run_python(python, "unused", tmp_path) or "")
    failure = run_page(page, "unused", tmp_path) or ""
    assert f"{page.name}:9" in failure and "never" not in failure.split("--- stdout")[1]


def test_mkdocs_strict_build_passes(tmp_path: Path) -> None:
    """The site builds with no warning: no broken link or anchor, every page in nav.

    Run here as well as by ``make test``, because ``mkdocs build --strict
    --quiet`` (the Makefile's line) hides the warnings strict mode counts,
    and then passes whatever they are.
    """
    proc = subprocess.run([str(Path(sys.executable).with_name("mkdocs")), "build", "--strict",
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # Material's banner says WARNING
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line or "Aborted" in line]
    assert proc.returncode == 0 and not warnings, proc.stderr[-4000:]


def test_no_file_holds_merge_conflict_markers() -> None:
    """A conflict resolved by hand must not leave its markers in a page, a sample or the code."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    found = []
    for name in tracked.splitlines():
        path = ROOT / name
        if path.suffix not in {".md", ".py", ".yml", ".yaml", ".toml", ".html", ".css", ".mako", ".cfg"}:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith(("<<<<<<< ", ">>>>>>> ")):
                found.append(f"{name}:{number}")
    assert not found, found


# --- Figures quoted from the benchmark (issue 25) -------------------------------------------------
#: A figure another page quotes from the benchmark is a link to the figures table whose title names
#: it: ``[1.60 s](benchmarks.md#figures "bench:ID")``, ``"bench:ID:stock"`` or ``"bench:ID:ratio"``.
#: IDs are those of ``docs/bench-results.json``, which ``make bench`` writes with the page.
BENCH_REF = re.compile(r'\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]*benchmarks\.md[^)\s]*)\s+"bench:(?P<ref>[^"]+)"\)')
RESULTS = ROOT / "docs" / "bench-results.json"


def bench_refs() -> list[tuple[str, str, str]]:
    return [(page.name, m["text"], m["ref"]) for page in PAGES for m in BENCH_REF.finditer(page.read_text("utf-8"))]


def test_quoted_benchmark_figures_match_the_bench_results() -> None:
    """A page quoting a figure the last bench run no longer backs fails here, not in a reader's hands."""
    import json

    from bench.all import resolve

    data = json.loads(RESULTS.read_text(encoding="utf-8"))
    refs = bench_refs()
    assert len(refs) >= 10, refs  # guard the pattern itself
    wrong = []
    for page, quoted, ref in refs:
        try:
            expected = resolve(data, ref)
        except KeyError as exc:
            wrong.append(f"{page}: {ref}: {exc}")
            continue
        if quoted.strip("*") != expected:
            wrong.append(f"{page}: quotes {quoted!r} for {ref}, the results say {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_a_drifted_figure_is_caught() -> None:
    from bench.all import resolve

    data = {"figures": [{"id": "x-y", "bench": "x", "name": "y", "value": 1.6, "unit": "s", "stock": 3.2,
                         "ratio": 0.5, "target": "", "met": None, "note": ""}]}
    assert resolve(data, "x-y") == "1.60 s" and resolve(data, "x-y:stock") == "3.20 s"
    assert resolve(data, "x-y:ratio") == "0.50"
    (match,) = BENCH_REF.finditer('takes [1.5 s](benchmarks.md#figures "bench:x-y") at most')
    assert resolve(data, match["ref"]) != match["text"]
    with pytest.raises(KeyError):
        resolve(data, "x-z")


def test_benchmarks_page_is_the_rendering_of_the_bench_results() -> None:
    """docs/benchmarks.md is generated from docs/bench-results.json (``python -m bench.all --render``)."""
    import json

    from bench.all import document

    data = json.loads(RESULTS.read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert page == document(data) + "\n", "run: .venv/bin/python -m bench.all --render"


def test_no_page_quotes_a_benchmark_figure_without_its_reference() -> None:
    """Figures the bench alone measures (per million, p99 to all workers) are quoted only by reference."""
    unreferenced = []
    pattern = re.compile(r"\d[\d,.]* (?:ids/s|rows/s|tasks/s)\b")  # MiB: also limits (1 MiB forms)
    for page in PAGES:
        if page.name == "benchmarks.md":
            continue
        text = BENCH_REF.sub("", page.read_text("utf-8"))
        unreferenced += [f"{page.name}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not unreferenced, unreferenced


# --- Settings: documented defaults and bounds against the code --------------------------------------
SETTING_ROW = re.compile(r"^\| `(?P<name>revstore_[a-z_]+)` \| `(?P<env>[A-Z_]+)` \| (?P<type>[^|]*) \| (?P<default>[^|]*) \|(?: [^|]* \|)?$")


def settings_rows() -> list[dict[str, str]]:
    text = (ROOT / "docs" / "configuration.md").read_text("utf-8")
    return [m.groupdict() for m in map(SETTING_ROW.match, text.splitlines()) if m]


@pytest.mark.parametrize("row", settings_rows(), ids=lambda r: r["name"])
def test_documented_default_and_bounds_are_the_codes(row: dict[str, str]) -> None:
    """The settings table's default and ``≥`` bound must be what ``load_settings`` does."""
    from revstore.config import load_settings
    from revstore.errors import ConfigurationError

    name = row["name"]
    base = {"revstore_url": "sqlite:///unused.sqlite3"}
    settings = load_settings(conf=base if name != "revstore_url" else {}, environ={})
    attr = name.removeprefix("revstore_")
    default = row["default"].strip()
    token = re.match(r"`([^`]*)`", default)
    if default.startswith("unset"):
        if hasattr(settings, attr) and name != "revstore_url":
            assert getattr(settings, attr) is None, (name, getattr(settings, attr))
        elif name == "revstore_url":
            assert settings.url is None
    elif token and not token[1].startswith("$"):
        value, actual = token[1], getattr(settings, attr)
        if value in ("true", "false"):
            assert actual is (value == "true"), (name, actual)
        elif value == "none":
            assert actual is None, (name, actual)
        elif re.fullmatch(r"[\d.]+", value):
            assert float(actual) == float(value), f"{name}: documented default {value}, the code's {actual}"
        else:
            assert actual == value, (name, actual)
    bound = re.search(r"≥ ([\d.]+)", row["type"])
    if bound:
        low = float(bound[1])
        integer = "integer" in row["type"]
        at = str(int(low)) if integer else str(low)
        below = str(int(low) - 1) if integer else str(low - min(0.01, low / 2) if low else -1)
        load_settings(conf={**base, name: at}, environ={})
        with pytest.raises(ConfigurationError):
            load_settings(conf={**base, name: below}, environ={})


def test_every_setting_has_a_row_in_the_settings_table() -> None:
    from revstore.config import ENV

    rows = {row["name"]: row["env"] for row in settings_rows()}
    assert rows == ENV


def test_pictures_are_what_their_source_draws() -> None:
    """docs/img's diagrams are drawn from docs/diagrams/diagrams.toml: redraw with docs/diagrams/draw.py."""
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "diagrams" / "draw.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_readme_links_into_the_docs_resolve() -> None:
    """README.md is read on GitHub, outside mkdocs' link check: its links to docs/ pages and anchors must exist."""
    from markdown.extensions.toc import slugify

    readme = (ROOT / "README.md").read_text("utf-8")
    broken = []
    for page, anchor in re.findall(r"\]\(docs/([a-z0-9_-]+\.md)(?:#([a-z0-9_-]+))?\)", readme):
        path = ROOT / "docs" / page
        if not path.exists():
            broken.append(page)
            continue
        headings = {slugify(h, "-") for h in re.findall(r"^#{1,6} (.+)$", path.read_text("utf-8"), re.M)}
        if anchor and anchor not in headings:
            broken.append(f"{page}#{anchor}")
    assert not broken, broken
