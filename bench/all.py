"""Run every benchmark and rewrite ``docs/benchmarks.md`` from the figures.

``python -m bench.all`` (what ``make bench``) runs; ``--quick`` proves the
scripts work in seconds and writes the document elsewhere (``--out``), since
tiny sizes measure nothing worth publishing.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import cleanup, hotpath, memory, propagation, startup, write_path
from bench.common import PG_URL, ROOT, Figure, redis_db, report, table

DOC = ROOT / "docs" / "benchmarks.md"
COMMAND = "make bench        # or: .venv/bin/python -m bench.all"

#: What limits each figure, from profiling these runs (py-spy, cProfile).
BOUNDS = """\
- **Start-up.** Stock unpickles a `LimitedSet` (one `add()`, with a heap
  push, per id) and then copies it into the worker's set id by id.  revstore
  has PostgreSQL pack the task ids into one newline-joined string and the
  remaining lifetimes into one array of 8-byte floats (3 Python objects on
  the wire instead of 3 million; about 0.6 s for a million), then fills
  Celery's set in one pass of C-level iteration and one heapify (about
  0.7 s) with the cyclic garbage collector paused.  What is left is the
  1,000,000 `str` objects, the set's own entries and its dict: the same work
  stock does at the end of its load.  Everything else in a worker's start
  (imports, forking the pool, the broker connection) is the same for both.
- **Hot path.** revstore adds nothing per task: Celery checks the same
  `LimitedSet` it always does.  The worker's only extra work is a 0.1 s
  timer on the event loop and an idle database thread.  Differences within
  a few per cent are run-to-run noise on a shared 2-core machine (the best
  of several alternating rounds is kept to damp it).
- **Write path.** A durable revoke is one transaction: take the clock row,
  upsert the rows, `pg_notify`, commit, so single ids are bound by the
  commit's WAL flush and round trips (a few ms each).  Large batches are
  bound by PostgreSQL inserting rows into a table with three indexes: the
  ids travel as three arrays in one short statement per 50,000 (a
  multi-row `VALUES` list was 5 times slower, most of it psycopg re-parsing
  a statement with 11 parameters per row).  Stock's figure is only a
  broadcast, stored nowhere.
- **Broadcast to commit.** Redis pub/sub to the worker, the worker's
  database thread waking, an "already stored?" read, then the write
  transaction.  Stock's figure is the round trip of a revoke with a reply,
  which stores nothing.
- **Propagation.** Listening: PostgreSQL delivers the notification at
  commit, the worker's database thread pulls the changed rows (one indexed
  query on `version`), and the event loop applies them at its next drain
  tick.  Polling: half the poll interval on average, the full interval at
  worst.  Stock has no propagation without a broadcast.
- **Idle sync.** One index probe on `version > marker` (nothing newer) plus
  the clock row: independent of the table's size.
- **Memory.** Both hold the same `LimitedSet` entries (a 3-tuple, a float
  stamp and an int per id) plus the id strings.  Stock's load leaves a
  second, discarded set's worth of fragmented heap behind; revstore's
  packed load creates almost no temporary per-row objects, and closes the
  connection whose buffer held the whole snapshot.
- **Cleanup.** Each batch is a short transaction: select up to 5,000
  expired keys with `FOR UPDATE SKIP LOCKED` and delete them by key, so
  writers (which touch other keys) never wait on it and several cleaners
  can run at once.  Throughput is bound by PostgreSQL deleting index
  entries; stock's in-memory purge is far faster but stock has nothing
  durable to clean.
"""


def machine() -> dict[str, str]:
    """Hardware, versions and load, for the document's header."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    engine = create_engine(PG_URL)
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "CPU": f"{os.cpu_count()} × {cpu}",
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Celery": version("celery"),
        "kombu": version("kombu"),
        "SQLAlchemy": version("sqlalchemy"),
        "psycopg": version("psycopg"),
        "PostgreSQL": pg.split()[0],
        "Redis": str(redis_db().info("server")["redis_version"]),
        "revstore": f"{version('revstore')} (commit {commit})",
    }


def document(figures: list[Figure], info: dict[str, str], seconds: float, load: tuple[str, str]) -> str:
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    missed = [f for f in figures if f.met is False]
    verdict = ("Every target is met." if not missed else
               "Missed: " + "; ".join(f"{f.name} ({f.cells()[1]}, target {f.target})" for f in missed) + ".")
    return "\n".join([
        "# Benchmarks",
        "",
        "revstore against stock Celery, measured side by side in the same run by `bench/`",
        "(real `celery worker` processes: prefork, Redis broker, PostgreSQL store).",
        "This page is written by the benchmark itself; do not edit it by hand.",
        "",
        "Reproduce (after the README's setup; PostgreSQL and Redis local):",
        "",
        "```text",
        COMMAND,
        ".venv/bin/python -m bench.startup   # one benchmark: startup, hotpath, write_path, propagation, memory, cleanup",
        "```",
        "",
        f"Run took {seconds / 60:.1f} minutes.  Machine: "
        + "; ".join(f"{k} {v}" for k, v in info.items()) + ".",
        f"The machine is shared (a 2-core VM; the test suite may run beside the benchmark): load average "
        f"{load[0]} before the run, {load[1]} after.  Ratios compare figures taken minutes apart on the "
        "same machine, which is what makes them meaningful; absolute figures move with the load.",
        "",
        "## Figures",
        "",
        "Ratio is revstore ÷ stock: for times lower is better, for rates higher is better.",
        "",
        table(figures),
        "",
        verdict,
        "",
        "Notes:",
        "",
        *notes,
        "",
        "## What bounds each figure",
        "",
        BOUNDS,
    ])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to prove the scripts work")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the document (default {DOC})")
    args = parser.parse_args()
    if args.quick and args.out is None:
        parser.error("--quick measures nothing worth publishing: give --out")
    started, load_before = time.monotonic(), loadavg()
    samples: dict[tuple[str, int], list[Any]] = {}
    steps: list[tuple[str, Callable[[], list[Figure]]]] = [
        (startup.TITLE, lambda: startup.run(args.quick, keep=samples)),
        (memory.TITLE, lambda: memory.run(args.quick, samples=samples)),
        (hotpath.TITLE, lambda: hotpath.run(args.quick)),
        (write_path.TITLE, lambda: write_path.run(args.quick)),
        (propagation.TITLE, lambda: propagation.run(args.quick)),
        (cleanup.TITLE, lambda: cleanup.run(args.quick)),
    ]
    figures: list[Figure] = []
    for title, step in steps:
        found = step()
        report(title, found)
        figures += found
    seconds = time.monotonic() - started
    out = args.out or DOC
    out.write_text(document(figures, machine(), seconds, (load_before, loadavg())) + "\n")
    print(f"\nall benchmarks in {seconds / 60:.1f} min; wrote {out}")
    if seconds > 600 and not args.quick:
        print("warning: over the 10-minute budget", file=sys.stderr)


if __name__ == "__main__":
    main()
