"""SQLite: one file, IMMEDIATE write transactions, times as naive UTC text."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import Engine, Table, bindparam, event, func, literal_column
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection
from sqlalchemy.sql import ColumnElement

from .base import Pooling, SqlBackend


class SqliteBackend(SqlBackend):
    name: ClassVar[str] = "sqlite"
    driver_hint: ClassVar[str] = "use a Python built with the sqlite3 module"
    supports_schema: ClassVar[bool] = False
    missing_table_words: ClassVar[tuple[tuple[str, ...], ...]] = (("no such table",),)
    missing_column_words: ClassVar[tuple[tuple[str, ...], ...]] = (("no such column",), ("has no column named",))

    def canonical_url(self, url: URL) -> URL:
        # a relative file path names another database from another directory
        if url.database in (None, "", ":memory:"):
            return url
        return url.set(database=os.path.abspath(url.database))

    def engine_options(self, pooling: Pooling) -> dict[str, Any]:
        # IMMEDIATE: a write transaction takes the write lock at its first
        # statement, so concurrent writers queue instead of deadlocking;
        # timeout is how long they queue.
        return {
            "pool_pre_ping": True,
            "connect_args": {"isolation_level": "IMMEDIATE", "check_same_thread": False,
                             "timeout": 30 if pooling.timeout is None else pooling.timeout},
        }

    def configure_engine(self, engine: Engine) -> None:
        event.listen(engine, "connect", _on_connect)

    def prepare_migrations(self, connection: Connection) -> None:
        # WAL lets workers read while a client writes; it is a property of
        # the file, so the admin sets it once here.
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")

    def limit_lock_wait(self, connection: Connection, seconds: float) -> None:
        # a PRAGMA takes no bound parameter: the value is an int made here
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, round(seconds * 1000))}")

    def is_lock_timeout(self, exc: BaseException) -> bool:
        orig = getattr(exc, "orig", exc)
        code = getattr(orig, "sqlite_errorcode", None)  # Python 3.11+
        return code == 5 if code is not None else "database is locked" in str(orig)  # SQLITE_BUSY

    def now(self) -> ColumnElement[Any]:
        # Same text format SQLAlchemy stores, so comparisons are exact.
        return func.strftime("%Y-%m-%d %H:%M:%f000", "now")

    def now_plus(self, seconds: float) -> ColumnElement[Any]:
        return func.strftime("%Y-%m-%d %H:%M:%f000", "now", bindparam("shift", f"{float(seconds):+} seconds"))

    def as_datetime(self, value: Any) -> datetime:
        return datetime.fromisoformat(value[:26]) if isinstance(value, str) else value

    def column_time(self, value: datetime) -> datetime:
        # naive UTC text, the format now() produces
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def seconds_left(self, expires_at: ColumnElement[Any]) -> ColumnElement[Any]:
        return (func.julianday(expires_at) - func.julianday("now")) * 86400.0

    def infinity(self) -> ColumnElement[Any]:
        return literal_column("9e999")  # SQLite's infinity

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
