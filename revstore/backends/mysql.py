"""MySQL (8.0+) and MariaDB (10.6+) through mysqlclient: UTC sessions, JSON_TABLE upserts, polling.

What differs from the portable SQL, and why:

* **Time.** ``DATETIME`` holds no zone, and ``NOW()`` follows the session's
  time zone, which follows the server's.  Every connection sets its session
  to UTC and the store asks for ``UTC_TIMESTAMP(6)``, so expiry is decided by
  the database clock in UTC whatever the server's zone.
* **Upsert.** ``INSERT ... ON DUPLICATE KEY UPDATE`` has no ``WHERE`` and
  assigns columns left to right, each seeing the ones already assigned.  The
  core's merge condition is therefore evaluated once, in the first
  assignment (``version``), and every later column changes only if the
  version did; a column other expressions read is assigned after them.
* **Counting.** No ``RETURNING`` on MySQL, and ``ON DUPLICATE KEY``'s row
  count mixes inserts, changes and untouched duplicates.  Every row a write
  transaction changes carries that transaction's version (the clock row
  serialises writers), so the version index counts them exactly.
* **Keys.** An upsert sends its keys as one JSON parameter read by
  ``JSON_TABLE`` (one short statement for 10,000 keys); lookups, updates and
  deletes use a row-value ``IN`` list, which both servers turn into primary
  key range reads (a ``JSON_TABLE`` subquery made ``UPDATE`` scan the table).
* **Cleanup.** ``SELECT ... ORDER BY expires_at LIMIT n FOR UPDATE`` walks
  the expiry index and stops after ``n`` rows; those keys are then deleted by
  primary key, ``n`` at a time: short statements however large the table.
* **Changes.** MySQL has no ``LISTEN/NOTIFY``: workers poll (plus the broker
  wake-up and the ``revstore_sync`` broadcast), see docs/design.md.
"""

from __future__ import annotations

import graphlib
import json
import math
from array import array
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import Column, Engine, Table, bindparam, event, func, literal, literal_column, select, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement, Select, visitors

from ..errors import ConfigurationError
from ..keys import StoredKeys
from ..schema import MAX_KEY_LENGTH, Tables
from .base import ADMIN_MARK, WORKER_MARK, Merge, Pooling, SqlBackend, stream_id_rows

#: The largest double: MySQL has no float infinity, so a row that never
#: expires loads as this and becomes ``inf`` on the way into Python.
NEVER = 1.7976931348623157e308

#: Rows per cleanup statement: each locks or removes its rows in three
#: indexes, and 1,000 of them keep one statement to tens of milliseconds.
DELETE_CHUNK = 1000

#: A never-expiring row's lifetime in the start-up load's integer microseconds
#: (some 146,000 years); it becomes ``inf`` on the way into Python.
NEVER_MICROS = 2**62
_MICRO = 1e-6

#: Keys from which an upsert tries a plain INSERT first (see MysqlBackend.upsert).
PLAIN_FIRST = 1_000
#: The server's error for a key already stored.
ER_DUP_ENTRY = 1062

#: Worker and admin account names go into GRANT statements, which take no
#: bound parameters: plain names only.
_ACCOUNT_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    """Every connection's session in UTC: CURRENT_TIMESTAMP defaults and any NOW() agree with UTC_TIMESTAMP()."""
    cursor = dbapi_connection.cursor()
    cursor.execute("SET time_zone = '+00:00'")
    cursor.close()


class MysqlBackend(SqlBackend):
    name: ClassVar[str] = "mysql"
    default_driver: ClassVar[str | None] = "mysqldb"
    driver_hint: ClassVar[str] = "pip install 'revstore[mysql]'"
    #: a MySQL schema is a database: name it in the URL
    supports_schema: ClassVar[bool] = False
    #: 2,000 keys make a 6,000-value IN list, well inside max_allowed_packet and
    #: the range optimizer's memory (past it, the server scans the table instead)
    key_chunk: ClassVar[int] = 2000
    #: keys per upsert: one JSON parameter of ~50 bytes per key
    upsert_chunk: ClassVar[int] = 10_000
    missing_table_words: ClassVar[tuple[tuple[str, ...], ...]] = (("doesn't exist",),)
    missing_column_words: ClassVar[tuple[tuple[str, ...], ...]] = (("unknown column",),)

    def engine_options(self, pooling: Pooling) -> dict[str, Any]:
        # mysqlclient prepares nothing on the server: revstore_prepare_threshold does not apply
        return {
            "pool_pre_ping": True,
            # the server closes idle connections after wait_timeout (8 h by default)
            "pool_recycle": 3600,
            "pool_size": pooling.size,
            "max_overflow": pooling.max_overflow,
            # InnoDB's default REPEATABLE READ takes gap locks on every range a
            # write reads; writers here are ordered by the clock row instead
            "isolation_level": "READ COMMITTED",
            # mysqlclient's timeouts are whole seconds; read and write
            # bound each answer on a server or network that went silent
            "connect_args": {"connect_timeout": 5} if pooling.timeout is None else {
                name: max(1, math.ceil(pooling.timeout))
                for name in ("connect_timeout", "read_timeout", "write_timeout")},
        }

    def configure_engine(self, engine: Engine) -> None:
        event.listen(engine, "connect", _utc_session)

    def limit_lock_wait(self, connection: Connection, seconds: float) -> None:
        # metadata locks (ALTER TABLE) and row locks have a timeout each, in whole seconds
        wait = max(1, math.ceil(seconds))
        connection.execute(text("SET SESSION lock_wait_timeout = :s, innodb_lock_wait_timeout = :s"), {"s": wait})

    def is_lock_timeout(self, exc: BaseException) -> bool:
        args = getattr(getattr(exc, "orig", exc), "args", ())
        return bool(args) and args[0] == 1205  # ER_LOCK_WAIT_TIMEOUT, metadata locks included

    def now(self) -> ColumnElement[Any]:
        return func.utc_timestamp(literal_column("6"))

    def now_plus(self, seconds: float) -> ColumnElement[Any]:
        return func.timestampadd(literal_column("MICROSECOND"), bindparam("shift", round(float(seconds) * 1e6)),
                                 self.now())

    def column_time(self, value: datetime) -> datetime:
        # DATETIME holds naive UTC, the kind of value UTC_TIMESTAMP() returns
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def seconds_left(self, expires_at: ColumnElement[Any]) -> ColumnElement[Any]:
        # * 1e-6 (a DOUBLE literal) keeps it a float: a DECIMAL would load as Decimal objects
        return func.timestampdiff(literal_column("MICROSECOND"), self.now(), expires_at) * literal_column("1e-6")

    def infinity(self) -> ColumnElement[Any]:
        return literal_column(repr(NEVER))

    def insert(self, table: Table) -> Any:
        return mysql.insert(table)

    def _on_duplicate(self, stmt: Any, table: Table, merge: Merge) -> Any:
        """``stmt`` resolving key conflicts by ``merge``, assignments ordered for MySQL's left-to-right update.

        ``version`` goes first and takes the new version only where the
        merge condition holds (read while every column is still old); each
        later column takes its merged value only if ``version`` changed.  A
        column whose old value another expression reads is assigned after
        that expression (a cycle would make the order matter: refused).
        """
        new = stmt.inserted
        set_, where = merge(table.c, new)
        changed = table.c.version == set_["version"]
        readers: dict[str, set[str]] = {name: set() for name in set_}
        for name, value in set_.items():
            if isinstance(value, ColumnElement):
                for col in visitors.iterate(value):
                    if isinstance(col, Column) and col.table is table and col.name != name and col.name in readers:
                        readers[col.name].add(name)
        readers.pop("version")
        for names in readers.values():
            names.discard("version")
        try:
            order = list(graphlib.TopologicalSorter(readers).static_order())
        except graphlib.CycleError:
            raise ConfigurationError("revstore: merge columns read each other; MySQL cannot order them") from None
        assignments = [("version", func.if_(where, set_["version"], table.c.version))]
        assignments += [(name, func.if_(changed, set_[name], table.c[name])) for name in order]
        return stmt.on_duplicate_key_update(assignments)

    def _written(self, conn: Connection, table: Table, version: Any) -> int:
        """Rows carrying ``version``: what this transaction inserted or changed so far."""
        return int(conn.execute(select(func.count()).where(table.c.version == version)).scalar_one())

    def upsert(self, conn: Connection, table: Table, stored: StoredKeys, shared: dict[str, Any],
               merge: Merge, notify: tuple[str, int] | None = None) -> int:
        sql_type = {"kind": "VARCHAR(8)", "header": f"VARCHAR({MAX_KEY_LENGTH})",
                    "value": f"VARCHAR({MAX_KEY_LENGTH})", "header_full": "LONGTEXT", "value_full": "LONGTEXT"}
        if not stored.rows:
            # plain task ids (a bulk revoke): one JSON array of strings, no
            # per-key object built in Python or parsed by the server; sorted, so
            # InnoDB fills its clustered index page after page, not at random
            names, data = ["value"], sorted(stored.task_ids)
            columns = f"value {sql_type['value']} CHARACTER SET utf8mb4 PATH '$'"
            constant = {"kind": "task", "header": ""}
        else:
            keys = stored.dicts()
            # Columns NULL in every key (the full texts, nearly always) stay out of
            # the JSON; a key's NULL is an absent member (NULL ON EMPTY).
            names = [name for name in keys[0] if any(key[name] is not None for key in keys)]
            data = [{n: key[n] for n in names if key[n] is not None} for key in keys]  # type: ignore[misc]
            columns = ", ".join(f"{name} {sql_type[name]} CHARACTER SET utf8mb4 PATH '$.{name}'" for name in names)
            constant = {}
        source = text(f"JSON_TABLE(:revstore_keys, '$[*]' COLUMNS ({columns})) AS revstore_keys").bindparams(
            revstore_keys=json.dumps(data, ensure_ascii=False))
        values = [literal(v, table.c[name].type) for name, v in {**constant, **shared}.items()]
        keyed = [literal_column(f"revstore_keys.{name}") for name in names]
        names = [*names, *constant]
        stmt = self.insert(table).from_select([*names, *shared], select(*keyed, *values).select_from(source))
        if len(stored) >= PLAIN_FIRST:
            # new keys (nearly always, in bulk): a plain INSERT, its row count exact, no count of the
            # version index before and after (a tenth of a 10,000-id revoke).  A key with a row fails
            # it with a duplicate key, which InnoDB undoes as a statement; then the upsert decides.
            try:
                return int(conn.execute(stmt).rowcount)
            except IntegrityError as exc:
                if getattr(exc.orig, "args", (None,))[0] != ER_DUP_ENTRY:
                    raise
        before = self._written(conn, table, shared["version"])
        conn.execute(self._on_duplicate(stmt, table, merge))
        return self._written(conn, table, shared["version"]) - before

    def upsert_rows(self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], merge: Merge) -> int:
        if not rows:
            return 0
        version = rows[0]["version"]
        before = self._written(conn, table, version)
        conn.execute(self._on_duplicate(self.insert(table), table, merge), list(rows))
        return self._written(conn, table, version) - before

    def delete_expired(self, conn: Connection, table: Table, expired: Callable[[Any], ColumnElement[bool]],
                       batch: int) -> list[int]:
        """Oldest first along the expiry index, at most ``batch`` rows; their versions.

        MySQL has no ``DELETE ... RETURNING``: each piece of the batch is
        locked first (``SELECT ... FOR UPDATE``, walking the expiry index
        and stopping after ``DELETE_CHUNK`` rows) and then deleted by primary
        key, so exactly the rows read are deleted.  Pieces keep every
        statement short: locking 5,000 rows in one took up to 100 ms.
        """
        cut = _at(expired(table), self.now(), conn.execute(select(self.now())).scalar_one())
        versions: list[int] = []
        while len(versions) < batch:
            size = min(DELETE_CHUNK, batch - len(versions))
            found = conn.execute(
                select(table.c.kind, table.c.header, table.c.value, table.c.version)
                .where(cut).order_by(table.c.expires_at).limit(size).with_for_update()
            ).all()
            if found:
                conn.execute(table.delete().where(self.key_in(table, [tuple(row[:3]) for row in found])))
            versions += [int(row[3]) for row in found]
            if len(found) < size:
                break
        return versions

    def task_ids(self, conn: Connection, stmt: Select[Any], chunk: int) -> Iterator[tuple[list[str], array]]:
        """The rows of ``stmt`` with each lifetime sent as whole microseconds, turned into seconds here.

        MariaDB formats a million doubles for the text protocol more slowly
        than it scans the table (1.8 s against 1.2 s for a million rows
        streamed); integers cost it next to nothing.  ``stmt``'s own lifetime
        column (``seconds_left``) stays what the other, few, rows use.
        """
        value = stmt.selected_columns[0]
        micros = func.coalesce(
            func.timestampdiff(literal_column("MICROSECOND"), self.now(), value.table.c.expires_at),
            literal_column(str(NEVER_MICROS)))
        for ids, left in self._streamed(conn, stmt.with_only_columns(value, micros), chunk):
            seconds = array("d", map(_MICRO.__mul__, left))
            if seconds and max(seconds) >= NEVER_MICROS * _MICRO:
                seconds = array("d", (float("inf") if x >= NEVER_MICROS * _MICRO else x for x in seconds))
            yield ids, seconds

    def _streamed(self, conn: Connection, stmt: Select[Any], chunk: int) -> Iterator[tuple[list[str], array]]:
        """Through an unbuffered driver cursor as plain tuples (no Row objects), where the driver has one."""
        unbuffered = getattr(getattr(conn.dialect.loaded_dbapi, "cursors", None), "SSCursor", None)
        if unbuffered is None:  # a driver chosen in the URL without one (Connector/Python)
            yield from super().task_ids(conn.execution_options(stream_results=True), stmt, chunk)
            return
        sql, params = _driver_sql(conn, stmt)
        cursor = conn.connection.driver_connection.cursor(unbuffered)  # type: ignore[union-attr]
        yield from stream_id_rows(conn, cursor, sql, params, chunk)

    def role_sql(self, tables: Tables, admin_role: str, worker_role: str, *, create_role: bool) -> str:
        """Accounts for the database the statements run in (``mysql <database> < grants.sql``).

        The admin may create, alter and drop tables in that database and
        hand the worker its grants; the worker gets rows of the two tables,
        appends to (and cleans) the audit, and a read of ``schema_info`` (the start-up window check), nothing
        else: no DDL anywhere.  No 0.1.0 worker ever ran on MySQL (it could
        not write there), so unlike PostgreSQL no legacy version table grant.
        """
        admin, worker = _account(admin_role), _account(worker_role)
        create = (lambda who: [f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY 'change-me';"]) if create_role else (
            lambda who: [])
        lines = [
            f"{ADMIN_MARK} (runs `revstore db upgrade`; run this in the revstore database)",
            *create(admin),
            f"GRANT CREATE, ALTER, DROP, INDEX, SELECT, INSERT, UPDATE, DELETE ON * TO {admin} WITH GRANT OPTION;",
            "",
            f"{WORKER_MARK} (rows only, no DDL; run after `revstore db upgrade`)",
            *create(worker),
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_table(tables.revocations.name)} TO {worker};",
            f"GRANT SELECT, UPDATE ON {_table(tables.clock.name)} TO {worker};",
            f"GRANT SELECT ON {_table(tables.schema_info.name)} TO {worker};",
            f"GRANT SELECT, INSERT, DELETE ON {_table(tables.audit.name)} TO {worker};",
        ]
        return "\n".join(lines) + "\n"


def _at(cond: ColumnElement[bool], now_sql: ColumnElement[Any], now: datetime) -> ColumnElement[bool]:
    """``cond`` with the server's clock replaced by the instant ``now`` it was read at."""
    return visitors.replacement_traverse(
        cond, {}, lambda e: literal(now, mysql.DATETIME(fsp=6)) if e.compare(now_sql) else None)


def _driver_sql(conn: Connection, stmt: Any) -> tuple[str, Any]:
    """``stmt`` as the driver's SQL text and parameters (positional or named, as its paramstyle wants)."""
    compiled = stmt.compile(dialect=conn.dialect)
    if compiled.positiontup is None:
        return str(compiled), dict(compiled.params)
    return str(compiled), tuple(compiled.params[name] for name in compiled.positiontup)


def _account(name: str) -> str:
    if not name or len(name) > 32 or not set(name) <= _ACCOUNT_CHARS or name[0].isdigit():
        raise ConfigurationError(f"revstore: account name {name!r} must be lower-case letters, digits and _")
    return f"'{name}'@'%'"


def _table(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"

