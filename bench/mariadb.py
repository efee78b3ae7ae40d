"""MariaDB beside PostgreSQL: start-up, bulk revoke, propagation, idle sync and cleanup.

The start-up and bulk-revoke figures are measured on both databases in this
run, taking turns, so the comparison holds whatever else the machine does;
the other benchmarks give PostgreSQL's propagation, idle sync and cleanup.
Each run works in its own MariaDB database (``revstore_bench_*``), dropped
afterwards.  The seeded rows are what ``store.add`` writes: one clock
version, a week's expiry (an hour ago for the cleanup).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import revstore
from bench import propagation, startup, write_path
from bench.cleanup import TARGET_STATEMENT_MS, timed_purge
from bench.common import MILLION, Figure, Run, fresh_store, log, main, median, percentile, seed
from revstore import migrate
from revstore.config import DEFAULT_CLEANUP_BATCH, DEFAULT_SYNC_INTERVAL, normalize_url
from revstore.store import RevocationStore

NAME = "mariadb"
TITLE = "MariaDB beside PostgreSQL"
MYSQL_URL = os.environ.get("REVSTORE_BENCH_MYSQL", "mysql://root@127.0.0.1:3306/")
ROWS, QUICK_ROWS = MILLION, 5_000
REPEATS, QUICK_REPEATS = 3, 1
BATCH, BATCHES, QUICK_BATCHES = 10_000, 15, 2
PROBES, QUICK_PROBES = (40, 0.25), (3, 0.25)
IDLE_CALLS, QUICK_IDLE_CALLS = 200, 20
TARGET_ADDED, TARGET_IDS = 2.0, 60_000


@contextmanager
def fresh_mysql_store() -> Iterator[RevocationStore]:
    """A migrated store in a new MariaDB database, dropped afterwards."""
    name = f"revstore_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalize_url(MYSQL_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    store = RevocationStore(make_url(MYSQL_URL).set(database=name))
    try:
        migrate.upgrade(store)
        yield store
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


def seed_mysql(store: RevocationStore, count: int, *, expired: bool = False) -> None:
    """``count`` task revocations written server-side; ids as ``bench.common.task_id`` makes them.

    MariaDB's sequence engine (``seq_0_to_N``) makes the rows without
    sending them; the id is the md5 of the number laid out as a UUID.
    """
    rev, clock = store.tables.revocations.name, store.tables.clock.name
    expires = "- INTERVAL 1 HOUR" if expired else "+ INTERVAL 7 DAY"
    md5 = "MD5(seq)"
    uuid_ = (f"CONCAT_WS('-', SUBSTR({md5}, 1, 8), SUBSTR({md5}, 9, 4), SUBSTR({md5}, 13, 4), "
             f"SUBSTR({md5}, 17, 4), SUBSTR({md5}, 21, 12))")
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {clock} SET version = version + 1 WHERE id = 1"))
        version = conn.execute(text(f"SELECT version FROM {clock} WHERE id = 1")).scalar_one()
        conn.execute(text(
            f"INSERT INTO {rev} (kind, header, value, terminate, revoked_by, revoked_at, expires_at, version, active) "
            f"SELECT 'task', '', {uuid_}, 0, 'bench', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) {expires}, :version, 1 "
            # in key order: appending to the clustered index, not splitting its pages at random
            f"FROM seq_0_to_{count - 1} ORDER BY 3"), {"version": version})
    with store.engine.connect() as conn:
        conn.execute(text(f"ANALYZE TABLE {rev}"))


def startup_added(run: Run, stores: dict[str, RevocationStore], repeats: int) -> dict[str, float]:
    """Median seconds each database's worker adds over a plain stock worker, taking turns."""
    samples: dict[str, list[float]] = {"stock": [], **{db: [] for db in stores}}
    startup.start_once(run, "warmup")
    for _ in range(repeats):
        samples["stock"].append(startup.start_once(run, "plain").seconds)
        for db, store in stores.items():
            samples[db].append(startup.start_once(run, f"{db.lower()}-full", store=store).seconds)
        log("startup: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items()))
    base = median(samples["stock"])
    return {db: median(samples[db]) - base for db in stores} | {"stock": base}


def bulk_rates(stores: dict[str, RevocationStore], batches: int) -> dict[str, float]:
    """Durable ids/s of ``revstore.revoke`` in batches of BATCH fresh ids per database, the databases
    taking turns (median of the rounds); and stock's broadcast."""
    clients = {db: write_path.clients(store) for db, store in stores.items()}
    samples: dict[str, list[float]] = {db: [] for db in [*stores, "stock"]}
    for _ in range(write_path.ROUNDS):
        for db, (app, stock_revoke) in clients.items():
            samples[db].append(write_path.ids_per_second(lambda ids: revstore.revoke(app, ids), BATCH, batches))
            if db == next(iter(clients)):
                samples["stock"].append(write_path.ids_per_second(lambda ids: stock_revoke(ids), BATCH, batches))
            log(f"bulk revoke {db}: {samples[db][-1]:,.0f} ids/s")
    for app, _ in clients.values():
        app.close()
    return {db: median(rates) for db, rates in samples.items()}


def run(quick: bool = False) -> list[Figure]:
    rows = QUICK_ROWS if quick else ROWS
    figures: list[Figure] = []
    with Run(NAME) as bench_run, fresh_mysql_store() as maria, fresh_store() as pg:
        seed_mysql(maria, rows)
        seed(pg, rows)
        stores = {"MariaDB": maria, "PostgreSQL": pg}
        added = startup_added(bench_run, stores, QUICK_REPEATS if quick else REPEATS)
        for db in stores:
            mine = db == "MariaDB"
            figures.append(Figure(
                NAME, f"{db}, {rows:,} stored: added start-up", added[db], "s",
                target=f"≤ {TARGET_ADDED:.0f} s" if mine else "", met=added[db] <= TARGET_ADDED if mine else None,
                note=f"over a plain stock worker ({added['stock']:.2f} s to its first task), same run" if mine else ""))
        with fresh_mysql_store() as empty:
            probes, gap = QUICK_PROBES if quick else PROBES
            per_worker, all_workers = propagation.probe_latencies(bench_run, empty, False, probes, gap)
            for pct in (50, 99):
                figures.append(Figure(NAME, f"MariaDB: commit to held by all {propagation.WORKERS} workers, p{pct}",
                                      percentile(all_workers, pct) * 1000, "ms",
                                      note="" if pct == 50 else
                                      f"no NOTIFY: the poll, every {DEFAULT_SYNC_INTERVAL:.0f} s by default"))
            calls = QUICK_IDLE_CALLS if quick else IDLE_CALLS
            idle_empty, idle_full = propagation.idle_sync_ms([empty, maria], calls)
        figures.append(Figure(NAME, "MariaDB: one idle sync, nearly empty table", idle_empty, "ms"))
        figures.append(Figure(NAME, f"MariaDB: one idle sync, {rows:,} rows", idle_full, "ms",
                              target="≤ 1.5 × nearly empty", met=idle_full <= 1.5 * idle_empty,
                              note=f"{idle_full / idle_empty:.2f} × the nearly empty table"))
    with fresh_mysql_store() as maria, fresh_store() as pg:
        rates = bulk_rates({"MariaDB": maria, "PostgreSQL": pg}, QUICK_BATCHES if quick else BATCHES)
    for db in ("MariaDB", "PostgreSQL"):
        mine = db == "MariaDB"
        figures.append(Figure(NAME, f"{db}: durable revoke, batches of {BATCH:,}", rates[db], "ids/s", rates["stock"],
                              target=f"≥ {TARGET_IDS:,} ids/s" if mine else "",
                              met=rates[db] >= TARGET_IDS if mine else None))
    with fresh_mysql_store() as maria:
        seed_mysql(maria, rows, expired=True)
        deleted, elapsed, longest, before, during = timed_purge(maria)
    assert deleted == rows, (deleted, rows)
    log(f"cleanup MariaDB: {deleted:,} rows in {elapsed:.1f}s; longest statement {longest:.0f} ms")
    figures += [
        Figure(NAME, f"MariaDB: delete {rows:,} expired rows", deleted / elapsed, "rows/s",
               note=f"batches of {DEFAULT_CLEANUP_BATCH:,}"),
        Figure(NAME, "MariaDB: longest single cleanup statement", longest, "ms",
               target=f"≤ {TARGET_STATEMENT_MS:.0f} ms", met=longest <= TARGET_STATEMENT_MS),
        Figure(NAME, "MariaDB: a writer's revoke during cleanup, p99", percentile(during, 99) * 1000, "ms",
               note=f"{percentile(before, 99) * 1000:.1f} ms p99 before the cleanup"),
    ]
    return figures


#: For docs/benchmarks.md: what bounds the MariaDB figures.
BOUNDS = """\
- **MariaDB start-up.** The load streams `(id, microseconds left)` rows
  through an unbuffered mysqlclient cursor: a million tuples, where
  PostgreSQL packs them server-side into three objects.  The lifetime
  travels as an integer: as a double, MariaDB's formatting for the text
  protocol took longer than its scan of the table (1.8 s against 1.2 s for a
  million rows).  Packing pages of 100,000 with `GROUP_CONCAT` was tried and
  was slower (3.6 s against 2.7 s).  A second pass for stamps, roots and ids
  stored by digest cost another second; stamps and roots are now read by
  their primary-key range and the rare digest ids looked up by key.  What is
  left is the server's scan of the clustered index: with InnoDB's default
  128 MiB buffer pool a million-row table does not stay cached, and is read
  again from the OS page cache at every start.
- **MariaDB bulk revoke.** One `INSERT ... SELECT ... FROM JSON_TABLE(...)`
  per 10,000 keys (one JSON parameter), a plain INSERT whose row count is
  exact.  Only when a key is already stored does it fail (InnoDB undoes the
  statement) and `ON DUPLICATE KEY UPDATE` runs, with two counts of the
  transaction's version on its index, since MySQL has no `RETURNING` (10-14
  ms of a 10,000-id batch).  Bound by InnoDB inserting random UUID keys into
  the clustered primary key and two secondary indexes (55-70 ms per 10,000,
  `JSON_TABLE`'s parse some 10 of them), and the commit's redo log flush.
- **MariaDB propagation.** MySQL has no `LISTEN/NOTIFY`: a row written only
  to the table (another application, the CLI without a broker) reaches workers at their next
  poll, every `revstore_sync_interval` (5 s by default: about half that on
  average, the whole interval at worst).  `revstore.revoke` also broadcasts
  the revoke itself, and `revstore.revoke_root` and `revstore.restore`
  broadcast `revstore_sync`, so workers that are up learn of those at once.
- **MariaDB idle sync.** The same indexed probe on `version > marker` as on
  PostgreSQL: independent of the table's size.
- **MariaDB cleanup.** Each batch reads the cut-off time once, then locks
  1,000 expired rows at a time, oldest first along the expiry index
  (`SELECT ... ORDER BY expires_at LIMIT 1000 FOR UPDATE`), and deletes
  exactly those by primary key (MySQL has no `DELETE ... RETURNING`).
  Locking 5,000 at once took up to 106 ms; a `DELETE ... ORDER BY
  expires_at, <key> LIMIT n` made MariaDB sort every expired row per batch
  (2.6 s).  Later pieces of a batch step over the rows the earlier ones
  deleted, which is what bounds the rate.
"""


if __name__ == "__main__":
    main(TITLE, run)
