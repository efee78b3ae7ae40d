"""Run every benchmark; write ``docs/bench-results.json`` and ``docs/benchmarks.md`` from the figures.

``python -m bench.all`` (what ``make bench``) runs; ``--quick`` proves the
scripts work in seconds and writes the document elsewhere (``--out``), since
tiny sizes measure nothing worth publishing.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import (cleanup, console, fleet, hotpath, mariadb, memory, mingle, mysql_drivers, plots, propagation,
                   snapshot_start, startup, write_path)
from bench.common import PG_URL, ROOT, STOCK_REVOKES_MAX, Figure, fmt, log, ratio_text, redis_db, report
from revstore.config import normalize_url

DOC = ROOT / "docs" / "benchmarks.md"
#: The run's figures, machine-readable: the page and every figure other pages quote come from it
RESULTS = ROOT / "docs" / "bench-results.json"
#: make bench's budget in seconds of measuring (issue 26): a run that takes longer says so
BUDGET = 20 * 60
COMMAND = "make bench        # or: .venv/bin/python -m bench.all"

#: What limits each figure, from profiling these runs (py-spy, cProfile).
BOUNDS = """\
- **Start-up.** Stock unpickles a `LimitedSet` (one `add()`, with a heap
  push, per id), then copies it id by id into the worker's set.  revstore
  reads its load on a helper thread started by its step's `create()`,
  before Celery forks the pool, connects to the broker and mingles, and
  `start()` only waits for it and swaps the built dict and heap into
  Celery's set (the same object).  PostgreSQL packs the task ids into one
  newline-joined string and the remaining lifetimes into one string of
  8-byte floats (3 Python objects on the wire instead of 3 million; about
  0.85 s of server time for a million, a quarter of it the scan, the rest
  the two aggregates), the client splits it (0.08 s), builds the set's
  dict in one pass of C-level iteration (about 0.6 s) and heapifies it
  (0.15-0.25 s), all on that thread.  So the added start-up is that
  sequence minus the worker's own start-up it overlaps: little without
  mingle (the pool and the broker take a few tenths of a second), mingle's
  whole 1 s wait with it.  A timeline of three starts with a million
  stored (marks written by the worker, from its spawn): the app's
  `revstore.install` runs at 0.65-0.70 s, revstore's imports take 0.19 s,
  the step's `create()` starts the read at 0.93-0.99 s, when a plain
  worker is about to run its first task (1.0 s); the read takes 0.7-0.8 s
  and the build 0.6-0.7 s after it, and `start()` waits 1.1-1.3 s for
  them.  The load starts late because Celery creates consumer steps last;
  starting it from `install` would hide at most the 0.3 s after it, and
  only by reading the database in whatever process imports the app.
  Reading the table in 8 pieces of its blocks,
  the next packed by the server while the client built the one before, hid
  the server's time in a single process but gained nothing in real workers
  on this 2-core machine shared with other work (the server and the
  builder compete for the same cores), and its growing dict left some 10
  MiB more resident: not kept.  `LimitedSet` itself is the floor: ids in a
  dict of `None` with their stamps in one float array (in deadline order
  from the database) build in about half the time and hold 44 MiB instead
  of 136 per million besides the strings, but Celery 5.3-5.6 read the
  set's `_data` and pickle it whole, so that structure would have to keep
  every one of those behaviours first.  The collector is left on there (it
  untracks the entries on its first pass; pausing it from a thread would
  leave pool children forked meanwhile without one).  A worker's other
  start-up work (imports, forking the pool, the broker) is the same for
  both; with nothing to load revstore adds its schema check and first
  connection (about 0.1 s, on the helper thread too).  The local snapshot
  of a full load is written 5 s later, on the sync thread: written at
  once, it took the interpreter from the starting worker for some 0.4 s
  per million ids.
- **Restart from the local snapshot.** The worker reads one file of about
  42 MB for a million ids (ids NUL-joined, deadlines as 8-byte floats, each
  piece CRC-checked), so the ids arrive as one string split in C, like the
  packed PostgreSQL load but without the server's aggregation and the wire;
  then it pulls only the changes since the snapshot's marker (one indexed
  query).  Filling Celery's set is the same for both and is most of what is
  left; it runs on the same helper thread as the load from the table.
  The snapshot's base is written on the sync thread after a full load
  (about 0.3 s of CPU for a million, off the event loop).
- **Hot path.** revstore adds no per-task work: Celery checks the same
  `LimitedSet` it always does (a dict lookup, whatever its size).  The
  worker's extras are a 0.1 s timer on the event loop (each tick is a whole
  loop iteration, about 0.5 ms of the main process: a 20 ms tick cost about
  2.5% of throughput) and idle database and listener threads.  The figure
  is bound by the main process moving messages through Redis and the pool.
  A million loaded ids used to cost that main process 25-40 µs per task
  (found by splitting the worker's CPU between the main process and the
  pool: the pool's did not move): Celery's set keeps its entries in a heap
  list, a list is always tracked by Python's cyclic collector, and each
  full collection (one every few thousand tasks in a busy worker) walked
  its million entries.  After a load of 100,000 ids or more revstore
  freezes what is alive (`gc.freeze`, as Python's docs advise for a
  pre-fork server), so no later collection walks them; entries the set
  drops are still freed.
  With name rules stored, a task whose name has rules pays one more dict
  lookup and each of its rules' argument checks (a JSON encoding of the
  argument compared with the rule's); names without rules cost nothing
  per task.  Every drain tick's expiry pass (`WorkerMemory.purge`, 10
  times a second) pops only what has expired from one deadline heap, so
  the rules cost it next to nothing (it walked every rule until the heap:
  some 0.5 ms a tick for 1,000); the in-process rows give both costs, and
  the share of the main process they take.
  On a shared machine one run's rate moves by 10-20% with the neighbours'
  load, more than the gap measured: the rounds take turns, the ratio is
  their median with the spread beside it, and the worker's CPU per task
  (which a neighbour disturbs far less) is given for the same runs.
- **Write path.** On PostgreSQL a durable revoke is one statement, run
  in autocommit: the clock bump, the upsert, the audit row and `pg_notify`
  are data-modifying CTEs of one `WITH`, its SQL compiled once per shape
  (building the SQLAlchemy statements each time cost some 5 ms of CPU per
  single-id revoke; now under 1 ms).  Single ids are bound by that round
  trip and the commit's WAL flush.  Large batches are bound by PostgreSQL
  inserting rows into a table with three indexes (backend CPU per 10,000
  fresh ids: 46-50 ms, 40 ms without the version and expiry indexes; the
  client's CPU 9-10 ms, the broadcast 4-7 ms).  Plain task ids travel as
  one text split by `string_to_array`, sorted into key order, checked in a
  few C-level passes over the whole list, and from 1,000 keys are written
  by a plain INSERT (an upsert's speculative insertion cost 80 ms per
  10,000); a key already stored fails it and the upsert runs instead.  A
  million ids in one call (`import-statedb`) are sorted once, then statements
  of 50,000 in one transaction under one clock version.  MariaDB takes the
  ids as a JSON array through `JSON_TABLE`, a plain INSERT first too.
  Stock's figure is a broadcast alone, stored nowhere.
- **Broadcast to commit.** Redis pub/sub to the worker (1-2 ms), the
  spool's `O_DSYNC` append on the event loop (a disk flush), the database
  thread waking (0.3 ms), then one statement that leaves out ids a row
  already covers (the first of N workers writes, the others only read and
  take no clock lock), takes the clock, upserts, audits and notifies, and
  commits (a second disk flush).  The two flushes, each 1-4 ms on this
  machine's virtual disk, are most of what is left.  Before, the time,
  the "already stored?" read, the clock, the upsert, the audit and the
  commit were six round trips with a statement built in Python before
  each (about 10 ms of a busy worker's CPU).  The throughput step has
  just written some 500,000 rows that autovacuum has not analyzed yet:
  the worker's pull after its own write once read `version > marker` as
  a third of the table and scanned it (0.13 s, which the next broadcast's
  write waited behind); bounded on both sides, the range is read through
  the version index whatever the statistics say.  Stock's figure is the
  round trip of a revoke with a reply, which stores nothing.
- **Propagation.** Listening: PostgreSQL delivers the notification at
  commit, each worker's database thread pulls the changed rows (one
  indexed query on `version`) and wakes the event loop through a pipe, and
  the loop applies them at once.  Before the pipe, rows waited for the
  next 0.1 s drain tick and the p99 to all 4 workers was over 100 ms.
  Polling: half the poll interval on average, the whole interval at worst.
  Stock has no propagation without a broadcast.
- **Idle sync.** An index probe on `version > marker` that finds nothing,
  the clock row and the database time: independent of the table's size.
- **Memory.** Both hold `LimitedSet` entries (a 3-tuple, a float stamp
  and an int per id, a dict slot, a heap slot) and the id strings (about
  85 bytes each).  The entries revstore loads all share one sequence
  number (a small int CPython caches; it only orders equal stamps, and
  loaded ids are strings that compare fine): 28 bytes less per id than
  stock's int each.  Stock's load also builds and drops a second set,
  which leaves a fragmented heap behind; revstore's packed load creates
  almost no temporary per-row objects, closes the connection whose input
  buffer held the whole snapshot, and once the load's pieces are freed
  hands the heap pages they leave free back to the system
  (`malloc_trim`, glibc).  What is left is the entries and the strings.
- **Cleanup.** Each batch is one short transaction: lock up to 5,000
  expired rows, oldest first, with `FOR UPDATE SKIP LOCKED` and delete
  them by `ctid`.  Writers touch other rows and never wait on its locks;
  several cleaners can run at once.  Run flat out as here, it still slows
  other commits (they share the WAL flush: see the writer's p99 before and
  during); a worker's cleanup runs at most 20 batches (100,000 rows) per
  `revstore_cleanup_interval`, a few tenths of a second of it.  Deleting by key instead made PostgreSQL
  hash-join the whole table for every batch (0.3 s per batch at a million
  rows, 7 times slower overall).  Stock's figure is `LimitedSet.purge` in
  memory: it has nothing durable to clean.
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
    engine = create_engine(normalize_url(mariadb.MYSQL_URL))
    with engine.connect() as conn:
        maria = conn.execute(text("SELECT VERSION()")).scalar_one()
    engine.dispose()
    commit = machine_commit()
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
        "MariaDB": maria.split("-")[0],
        "mysqlclient": version("mysqlclient"),
        "Redis": str(redis_db().info("server")["redis_version"]),
        "revstore": f"{version('revstore')} (commit {commit})",
    }


def figure_id(bench: str, name: str) -> str:
    """The stable key a page quotes a figure by: ``bench:<id>`` (see docs/benchmarks.md)."""
    return re.sub(r"[^a-z0-9]+", "-", f"{bench} {name}".lower()).strip("-")


def results(figures: list[Figure], info: dict[str, str], seconds: float, load: tuple[str, str],
            drawn: list[plots.Plot], reused: list[str], steps: dict[str, float] | None = None) -> dict[str, Any]:
    """What a run measured, machine-readable: written to ``docs/bench-results.json``."""
    return {
        "minutes": round(seconds / 60, 1),
        #: each step's minutes, so a step that outgrows make bench's budget shows which
        "step_minutes": {name: round(took / 60, 1) for name, took in (steps or {}).items()},
        "machine": info,
        "load": list(load),
        "reused": reused,
        "plots": [list(plot) for plot in drawn],
        "figures": [{"id": f.key or figure_id(f.bench, f.name), "bench": f.bench, "name": f.name, "value": f.value,
                     "unit": f.unit, "stock": f.stock, "ratio": f.ratio, "rounds": f.rounds,
                     "baseline": f.baseline, "target": f.target, "met": f.met, "note": f.note} for f in figures],
    }


def cell(figure: dict[str, Any], column: str = "revstore") -> str:
    """A figure as the pages quote it: ``column`` is revstore, stock or ratio (the bare median)."""
    if column == "revstore":
        return fmt(figure["value"], figure["unit"])
    if column == "stock":
        return "—" if figure["stock"] is None else fmt(figure["stock"], figure["unit"])
    if column == "ratio":
        return "" if figure["ratio"] is None else f"{figure['ratio']:.2f}"
    raise KeyError(column)


def table_cells(figure: dict[str, Any]) -> tuple[str, str]:
    """The stock and ratio cells of the page's tables: what the baseline is when not stock, the rounds' spread."""
    stock = cell(figure, "stock")
    if figure.get("baseline") and figure["stock"] is not None:
        stock += f" ({figure['baseline']})"
    return stock, ratio_text(figure["ratio"], figure.get("rounds"))


def resolve(data: dict[str, Any], ref: str) -> str:
    """``ID`` or ``ID:stock`` / ``ID:ratio``: the text a page must quote for that figure."""
    key, _, column = ref.partition(":")
    found = [f for f in data["figures"] if f.get("id", figure_id(f["bench"], f["name"])) == key]
    if len(found) != 1:
        raise KeyError(f"no bench figure {key!r} in the results")
    return cell(found[0], column or "revstore")


#: The figures most users care about, for the page's summary: (id, what it is, what stock's column means).
SUMMARY = [
    ("startup-1-000-000-stored-added-start-up", "Start-up added by 1,000,000 stored revocations"),
    ("startup-1-000-000-stored-spawn-to-first-task", "Worker spawn to first task, 1,000,000 stored"),
    ("memory-rss-added-by-1-000-000-revocations", "Memory held for 1,000,000 revocations"),
    ("hotpath-20-000-trivial-tasks-each-revstore-with-1-000-000-stored-vs-off-side-by-side",
     "Task throughput, 1,000,000 stored (stock: revstore off, rounds taking turns)"),
    ("hotpath-1-000-name-rules-stored-one-names-the-task-with-a-where-it-fails-vs-none",
     "Task throughput with 1,000 name rules stored (baseline: revstore with none)"),
    ("write-path-durable-revoke-batches-of-1", "Revoke one id (stock: a broadcast, stored nowhere)"),
    ("write-path-durable-revoke-batches-of-10-000", "Revoke in batches of 10,000 (stock: a broadcast)"),
    ("write-path-broadcast-revoke-to-row-committed-by-a-worker-p50",
     "Broadcast revoke until stored, p50 (stock: until the worker replies)"),
    ("propagation-listening-on-commit-to-held-by-all-4-workers-p99",
     "Table-only revoke to all 4 workers, NOTIFY, p99 (stock: never)"),
    ("propagation-listening-off-commit-to-held-by-all-4-workers-p99",
     "Table-only revoke to all 4 workers, polling every 5 s, p99 (stock: never)"),
    ("cleanup-delete-1-000-000-expired-rows", "Delete 1,000,000 expired revocations (stock: purge in memory)"),
]


def summary(data: dict[str, Any]) -> list[str]:
    rows = ["| figure | revstore | stock Celery | ratio |", "|---|---|---|---|"]
    for key, label in SUMMARY:
        figure = next((f for f in data["figures"] if f["id"] == key), None)
        if figure is None:  # a run that skipped the step
            continue
        stock, ratio = table_cells(figure)
        rows.append(f"| {label} | {cell(figure)} | {stock} | {ratio or 'no stock equivalent'} |")
    return rows


def document(data: dict[str, Any]) -> str:
    """The page, from the results alone (``--render`` rewrites it without measuring)."""
    figures = data["figures"]
    missed = [f for f in figures if f["met"] is False]
    verdict = ("Every target is met." if not missed else
               "Missed: " + "; ".join(f"{f['name']} ({cell(f)}, target {f['target']})" for f in missed)
               + ".  Why, and what bounds them, is below.")
    met = {None: "", True: "met", False: "**missed**"}
    groups: list[str] = []
    for bench in dict.fromkeys(f["bench"] for f in figures):  # in the order the run measured them
        rows = [f for f in figures if f["bench"] == bench]
        groups += [f"### `{bench}`", "", "| figure | revstore | stock Celery | ratio | target |  |", "|---|---|---|---|---|---|"]
        groups += [f"| {f['name']} | {cell(f)} | {' | '.join(table_cells(f))} | {f['target']} | "
                   f"{met[f['met']]} |" for f in rows]
        noted = [f"- {f['name']}: {f['note']}" for f in rows if f["note"]]
        groups += ["", *(["Notes:", "", *noted, ""] if noted else [])]
    info, load = data["machine"], data["load"]
    return "\n".join([
        "# Benchmarks",
        "",
        "revstore against stock Celery, measured side by side in the same run by `bench/`",
        "(real `celery worker` processes: prefork, Redis broker, PostgreSQL store; MariaDB beside it in the",
        "`mariadb` rows, and the MySQL drivers compared in the `mysql_drivers` rows).",
        "This page is written by the benchmark from `docs/bench-results.json`, which the same run writes;",
        "do not edit either by hand.  Other pages quote these figures by reference, and `tests/test_docs.py`",
        "fails when a quoted figure no longer matches the results.",
        "",
        "## Summary",
        "",
        "Ratio is revstore ÷ stock: for times and memory lower is better, for rates higher is better.",
        "Where stock and revstore ran in rounds that took turns (one after the other, the order changing from",
        "round to round), the ratio is the median of the rounds' ratios, and the lowest and highest round's",
        "ratio follow it in brackets: a gap smaller than that spread is within the machine's noise.",
        "A stock column that holds something other than stock Celery says what it holds in brackets.",
        "",
        f"Stock workers run with Celery's cap on the revoked set lifted (`CELERY_WORKER_REVOKES_MAX=0`).  At the",
        f"default cap a stock worker keeps only the newest {STOCK_REVOKES_MAX:,} revoked ids and forgets the",
        "rest, so with more stored it would not be holding what revstore holds: the comparison would credit",
        "stock for doing less.  The start-up and memory rows marked \"default cap\" show stock as it ships,",
        f"holding {STOCK_REVOKES_MAX:,} of the same ids, for what lifting the cap costs.",
        "",
        "What each comparison means, row by row, is in [revstore and stock Celery](index.md#revstore-and-stock-celery).",
        "Terms such as marker, drain tick and pidbox are defined in the [Glossary](glossary.md).",
        "",
        *summary(data),
        "",
        "Reproduce (after the README's setup; PostgreSQL and Redis local):",
        "",
        "```text",
        COMMAND,
        ".venv/bin/python -m bench.startup   # one benchmark: startup, snapshot_start, hotpath, write_path, propagation, "
        "memory, cleanup, console, mingle, fleet, mariadb, mysql_drivers",
        ".venv/bin/python -m bench.all --render   # rewrite this page from docs/bench-results.json",
        "```",
        "",
        f"Run took {data['minutes']:.1f} minutes of measuring"
        + (" (" + ", ".join(f"`{k}` {v:.1f}" for k, v in data["step_minutes"].items()) + ")"
           if data.get("step_minutes") else "")
        + ".  Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + ".",
        *([f"Taken from an earlier run's checkpoint (not re-measured with the rest): {', '.join(data['reused'])}."]
          if data["reused"] else []),
        f"The machine is shared (a 2-core VM; the test suite may run beside the benchmark): load average "
        f"{load[0]} before the run, {load[1]} after.  Ratios compare figures taken minutes apart on the "
        "same machine, which is what makes them meaningful; absolute figures move with the load.",
        "Some figures are measured twice in one run: the `mariadb` step repeats PostgreSQL's start-up and bulk",
        "revoke beside MariaDB's, minutes after the `startup` and `write_path` steps; the two differ by that",
        "load, and other pages quote the `startup` and `write_path` rows.",
        "",
        "## Figures",
        "",
        "Every figure of the run, by benchmark.  " + verdict,
        "",
        *groups,
        "## Plots",
        "",
        *[line for name, caption in data["plots"] for line in (f"![{caption}](img/{name})", "", f"*{caption}.*", "")],
        "## What bounds each figure",
        "",
        BOUNDS + mingle.BOUNDS + fleet.BOUNDS + mariadb.BOUNDS + mysql_drivers.BOUNDS,
    ])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


#: Each finished step's figures and raw samples, so a crash late in a 40-minute
#: run keeps what was measured, and ``--only`` re-measures single steps.
CHECKPOINTS = ROOT / ".cache" / "bench"


def _checkpoint(name: str, quick: bool) -> Path:
    return CHECKPOINTS / f"{name}{'-quick' if quick else ''}.pickle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to prove the scripts work")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the document (default {DOC})")
    parser.add_argument("--only", default="", metavar="NAME[,NAME]",
                        help="re-measure these steps; take the others from the last run's checkpoints")
    parser.add_argument("--render", action="store_true",
                        help=f"measure nothing: rewrite {DOC.name} from {RESULTS.name}")
    parser.add_argument("--resume", action="store_true",
                        help="skip steps whose checkpoint this commit already wrote (a run cut short)")
    args = parser.parse_args()
    if args.quick and args.out is None:
        parser.error("--quick measures nothing worth publishing: give --out")
    if args.render:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
        (args.out or DOC).write_text(document(data) + "\n")
        return
    started, load_before = time.monotonic(), loadavg()
    samples: dict[tuple[str, int], list[Any]] = {}
    latencies: dict[str, list[float]] = {}
    raw: dict[str, Any] = {"startup": samples, "propagation": latencies}
    steps: list[tuple[str, str, Callable[[], list[Figure]]]] = [
        (startup.NAME, startup.TITLE, lambda: startup.run(args.quick, keep=samples)),
        (memory.NAME, memory.TITLE, lambda: memory.run(args.quick, samples=samples)),
        (snapshot_start.NAME, snapshot_start.TITLE, lambda: snapshot_start.run(args.quick)),
        (hotpath.NAME, hotpath.TITLE, lambda: hotpath.run(args.quick)),
        (write_path.NAME, write_path.TITLE, lambda: write_path.run(args.quick)),
        (propagation.NAME, propagation.TITLE, lambda: propagation.run(args.quick, keep=latencies)),
        (cleanup.NAME, cleanup.TITLE, lambda: cleanup.run(args.quick)),
        (console.NAME, console.TITLE, lambda: console.run(args.quick)),
        (mingle.NAME, mingle.TITLE, lambda: mingle.run(args.quick)),
        (fleet.NAME, fleet.TITLE, lambda: fleet.run(args.quick, keep=raw)),
        (mariadb.NAME, mariadb.TITLE, lambda: mariadb.run(args.quick)),
        (mysql_drivers.NAME, mysql_drivers.TITLE, lambda: mysql_drivers.run(args.quick)),
    ]
    only = {name for name in args.only.split(",") if name}
    unknown = only - {name for name, _, _ in steps}
    if unknown:
        parser.error(f"no benchmark named {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(name for name, _, _ in steps)}")
    commit = machine_commit()
    figures: list[Figure] = []
    reused: list[str] = []
    took = 0.0
    steps_took: dict[str, float] = {}
    for name, title, step in steps:
        path = _checkpoint(name, args.quick)
        saved = pickle.loads(path.read_bytes()) if path.exists() else None
        if saved and ((only and name not in only) or (args.resume and saved["commit"] == commit)):
            found, seconds = saved["figures"], saved["seconds"]
            _merge(raw, saved["raw"])
            reused.append(f"`{name}` (commit {saved['commit']})")
            log(f"{name}: figures of the run at {saved['commit']} ({saved['seconds'] / 60:.1f} min), not re-measured")
        elif only and name not in only:
            raise SystemExit(f"bench: no checkpoint for {name}; run it too (--only {args.only},{name}) "
                             "or run everything")
        else:
            before = {key: value for key, value in raw.items()}
            began = time.monotonic()
            found = step()
            seconds = time.monotonic() - began
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pickle.dumps({"commit": commit, "seconds": seconds, "figures": found,
                                           "raw": _raw_of(raw, before)}))
        report(title, found)
        log(f"{name}: {seconds / 60:.1f} min")
        figures += found
        took += seconds
        steps_took[name] = seconds
    out = args.out or DOC
    drawn = plots.draw(raw, out.parent / "img")
    data = results(figures, machine(), took, (load_before, loadavg()), drawn, reused, steps_took)
    out.with_name(RESULTS.name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    out.write_text(document(data) + "\n")
    print(f"\nall benchmarks: {took / 60:.1f} min of measuring "
          f"({(time.monotonic() - started) / 60:.1f} min this run); wrote {out}")
    if took > BUDGET and not args.quick:
        print(f"warning: over make bench's budget of {BUDGET / 60:.0f} minutes", file=sys.stderr)


def _raw_of(raw: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What this step added to the raw samples (the plots' input), by key: a copy to checkpoint."""
    return {key: value for key, value in raw.items() if key not in before or key in ("startup", "propagation")}


def _merge(raw: dict[str, Any], saved: dict[str, Any]) -> None:
    for key, value in saved.items():
        if isinstance(raw.get(key), dict) and isinstance(value, dict):
            for sub, items in value.items():
                raw[key].setdefault(sub, items)
        else:
            raw.setdefault(key, value)


def machine_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
