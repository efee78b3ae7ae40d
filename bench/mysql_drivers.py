"""Which Python driver ``revstore[mysql]`` installs: PyMySQL, mysqlclient or MariaDB Connector/Python.

Each driver runs the two statements that decide a worker's and a client's
costs, on the same MariaDB table of 1,000,000 task revocations:

* the start-up load: every live task id and its seconds left, streamed
  through an unbuffered cursor into a list of ids and a float array (what a
  worker holds);
* a durable bulk revoke: 10,000 fresh ids per transaction, the keys as one
  JSON parameter read by ``JSON_TABLE`` (the statement revstore sends), and
  for comparison as the driver's own ``executemany`` of a multi-row insert.

The drivers run in turns, each round in the same order, and each figure is
the median of its rounds, so a load spike hits all three alike.  Not a
comparison of revstore with stock Celery: the other benchmarks are.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import MILLION, Figure, log, main, median
from revstore import migrate
from revstore.records import gc_paused
from revstore.store import RevocationStore

NAME = "mysql_drivers"
TITLE = "MySQL/MariaDB driver comparison"
MYSQL_URL = os.environ.get("REVSTORE_BENCH_MYSQL", "mysql://root@127.0.0.1:3306/")
#: SQLAlchemy driver name -> pip package
DRIVERS = {"pymysql": "PyMySQL", "mysqldb": "mysqlclient", "mariadbconnector": "mariadb (Connector/Python)"}
ROWS, QUICK_ROWS = MILLION, 5_000
BATCH, QUICK_BATCH = 10_000, 500
ROUNDS, QUICK_ROUNDS = 3, 1
WRITES_PER_ROUND = 3

LOAD_SQL = (
    "SELECT value, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) * 1e-6 FROM {table} "
    "WHERE kind = 'task' AND active AND (expires_at IS NULL OR expires_at > UTC_TIMESTAMP(6))"
)
UPSERT_COLUMNS = "kind, header, value, terminate, revoked_by, revoked_at, expires_at, version, active"
UPSERT_TAIL = (
    " ON DUPLICATE KEY UPDATE version = IF(active, version, VALUES(version)), "
    "expires_at = IF(version = VALUES(version), VALUES(expires_at), expires_at), active = 1"
)
JSON_UPSERT_SQL = (
    "INSERT INTO {table} (" + UPSERT_COLUMNS + ") "
    "SELECT 'task', '', k.value, 0, 'bench', {p}, {p}, {p}, 1 "
    "FROM JSON_TABLE({p}, '$[*]' COLUMNS (value VARCHAR(255) CHARACTER SET utf8mb4 PATH '$')) AS k"
    + UPSERT_TAIL
)
MANY_UPSERT_SQL = (
    "INSERT INTO {table} (" + UPSERT_COLUMNS + ") "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
    + UPSERT_TAIL
)


@dataclass
class Driver:
    """One driver's DB-API connection to the benchmark database."""

    name: str
    connect: Callable[[], Any]
    #: the driver's placeholder for one parameter
    param: str

    def cursor(self, conn: Any, streaming: bool) -> Any:
        """An unbuffered cursor for the load, a buffered one for writes."""
        if self.name == "mariadbconnector":
            return conn.cursor(buffered=not streaming)
        if streaming:
            module = __import__("pymysql.cursors" if self.name == "pymysql" else "MySQLdb.cursors",
                                fromlist=["SSCursor"])
            return conn.cursor(module.SSCursor)
        return conn.cursor()


def drivers(database: str) -> dict[str, Driver]:
    url = make_url(MYSQL_URL)
    host, port, user, password = url.host or "127.0.0.1", url.port or 3306, url.username or "root", url.password or ""

    def pymysql_connect() -> Any:
        import pymysql

        return pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                               charset="utf8mb4")

    def mysqldb_connect() -> Any:
        import MySQLdb

        return MySQLdb.connect(host=host, port=port, user=user, password=password, database=database,
                               charset="utf8mb4")

    def mariadb_connect() -> Any:
        import mariadb

        return mariadb.connect(host=host, port=port, user=user, password=password, database=database)

    return {
        "pymysql": Driver("pymysql", pymysql_connect, "%s"),
        "mysqldb": Driver("mysqldb", mysqldb_connect, "%s"),
        "mariadbconnector": Driver("mariadbconnector", mariadb_connect, "?"),
    }


@contextmanager
def bench_database(rows: int) -> Iterator[tuple[str, RevocationStore]]:
    """A new database with revstore's tables and ``rows`` live task revocations; dropped afterwards."""
    name = f"revstore_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(MYSQL_URL).set(drivername="mysql+pymysql"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    store = RevocationStore(make_url(MYSQL_URL).set(drivername="mysql+pymysql", database=name))
    try:
        migrate.upgrade(store)
        table = store.tables.revocations.name
        with store.engine.begin() as conn:
            # seq_1_to_N is MariaDB's sequence engine: the rows never cross the wire
            conn.execute(text(
                f"INSERT INTO {table} ({UPSERT_COLUMNS}) SELECT 'task', '', UUID(), 0, 'bench', "
                f"UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 7 DAY, 1, 1 FROM seq_1_to_{rows}"))
            conn.execute(text(f"ANALYZE TABLE {table}"))
        yield name, store
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


def load(driver: Driver, table: str) -> tuple[float, int]:
    """Seconds to stream the start-up load into ids and a float array; how many rows."""
    conn = driver.connect()
    try:
        started = time.perf_counter()
        with gc_paused():
            cur = driver.cursor(conn, streaming=True)
            cur.execute(LOAD_SQL.format(table=table))
            ids: list[str] = []
            left = array("d")
            while part := cur.fetchmany(20_000):
                values, remaining = zip(*part)
                ids.extend(values)
                left.extend(remaining)
            cur.close()
        return time.perf_counter() - started, len(ids)
    finally:
        conn.close()


def bulk_write(driver: Driver, table: str, batch: int, how: str) -> float:
    """ids/s of ``WRITES_PER_ROUND`` durable transactions of ``batch`` fresh ids each."""
    conn = driver.connect()
    try:
        work = [[str(uuid.uuid4()) for _ in range(batch)] for _ in range(WRITES_PER_ROUND)]
        started = time.perf_counter()
        for ids in work:
            cur = driver.cursor(conn, streaming=False)
            cur.execute("UPDATE revstore_clock SET version = version + 1 WHERE id = 1")
            # the database's time, once per transaction, bound like every value
            cur.execute("SELECT version, UTC_TIMESTAMP(6) FROM revstore_clock WHERE id = 1")
            version, now = cur.fetchone()
            expires = now + timedelta(days=7)
            if how == "json":
                cur.execute(JSON_UPSERT_SQL.format(table=table, p=driver.param),
                            (now, expires, version, json.dumps(ids)))
            else:
                cur.executemany(MANY_UPSERT_SQL.format(table=table, p=driver.param),
                                [("task", "", i, 0, "bench", now, expires, version, 1) for i in ids])
            cur.close()
            conn.commit()
        return batch * len(work) / (time.perf_counter() - started)
    finally:
        conn.close()


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(pkg.split()[0]) for name, pkg in
            (("pymysql", "PyMySQL"), ("mysqldb", "mysqlclient"), ("mariadbconnector", "mariadb"))}


def run(quick: bool = False) -> list[Figure]:
    rows, batch, rounds = (QUICK_ROWS, QUICK_BATCH, QUICK_ROUNDS) if quick else (ROWS, BATCH, ROUNDS)
    loads: dict[str, list[float]] = {d: [] for d in DRIVERS}
    writes: dict[tuple[str, str], list[float]] = {}
    with bench_database(rows) as (database, store):
        table = store.tables.revocations.name
        found = drivers(database)
        for _ in range(rounds):
            for name, driver in found.items():
                seconds, count = load(driver, table)
                assert count >= rows, f"{name} loaded {count} of {rows} rows"
                loads[name].append(seconds)
                for how in ("json", "executemany"):
                    writes.setdefault((name, how), []).append(bulk_write(driver, table, batch, how))
                log(f"{name}: load {seconds:.2f}s, writes " + ", ".join(
                    f"{how} {writes[(name, how)][-1]:,.0f} ids/s" for how in ("json", "executemany")))
    installed = versions()
    load_of = {name: median(times) for name, times in loads.items()}
    write_of = {name: median(writes[(name, "json")]) for name in DRIVERS}
    fastest_load, fastest_write = min(load_of, key=load_of.__getitem__), max(write_of, key=write_of.__getitem__)
    figures = []
    for name, package in DRIVERS.items():
        label = f"{package} {installed[name]}"
        verdict = ", ".join(what for what, best in (("fastest load", fastest_load), ("fastest bulk write", fastest_write))
                            if best == name)
        figures.append(Figure(NAME, f"{label}: load {rows:,} ids", load_of[name], "s",
                              note=f"{verdict} in this run" if verdict else ""))
        for how, what in (("json", "keys as one JSON parameter"), ("executemany", "executemany")):
            figures.append(Figure(NAME, f"{label}: revoke {batch:,} ids per transaction, {what}",
                                  median(writes[(name, how)]), "ids/s"))
    return figures


#: For docs/benchmarks.md: why the extra installs the driver it does.
BOUNDS = """\
- **MySQL/MariaDB driver.** `revstore[mysql]` installs mysqlclient, and
  `mysql://` and `mariadb://` URLs use it: it loaded the start-up snapshot
  fastest and wrote bulk revokes fastest (the `mysql_drivers` rows).  The
  three drivers send the same statements, so the server's share is equal;
  the difference is the client's.  PyMySQL parses every row in Python
  (several times slower on a million rows); mysqlclient and Connector/Python
  parse in C.
  Each driver's `executemany` of a multi-row insert was slower than one JSON
  parameter read by `JSON_TABLE`, which is what revstore sends.  mysqlclient
  builds against the MariaDB/MySQL client library (`libmariadb-dev` and
  `pkg-config` on Debian; `.ci/packages` installs them when missing).
"""


if __name__ == "__main__":
    main(TITLE, run)
