"""PostgreSQL (psycopg 3): keys as one JSON parameter, packed start-up load, ctid cleanup, NOTIFY."""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Table, Text, bindparam, case, cast, column, func, literal, literal_column, select, text, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ColumnElement, Select

from ..keys import StoredKeys
from ..schema import Tables
from .base import Key, Listener, Merge, Pooling, SqlBackend, stream_id_rows
from .postgresql_fold import KEY_COLUMNS, compile_fold, key_params, key_source, new_keys_first

if TYPE_CHECKING:
    from ..writes import FoldedWrite


def _timeouts(seconds: float | None) -> dict[str, Any]:
    """libpq's bounds on an unreachable server.

    ``connect_timeout`` covers the TCP connect and the start-up exchange
    (psycopg takes whole seconds, at least 2).  libpq has no read timeout:
    ``tcp_user_timeout`` closes a connection whose sent data goes
    unacknowledged that long (a firewall dropping packets), so a query on a
    pooled connection cannot hang for the kernel's 15 minutes.  A server-side
    ``statement_timeout`` would need the ``options`` start-up parameter,
    which PgBouncer refuses.
    """
    if seconds is None:
        return {}
    return {"connect_timeout": max(2, math.ceil(seconds)), "tcp_user_timeout": math.ceil(seconds * 1000)}


#: A packed start-up reply at least this large (bytes) closes its connection after use (see _packed).
KEEP_CONNECTION_BELOW = 1 << 20


class PostgresBackend(SqlBackend):
    name: ClassVar[str] = "postgresql"
    default_driver: ClassVar[str | None] = "psycopg"
    driver_hint: ClassVar[str] = "pip install 'revstore[postgres]'"
    supports_schema: ClassVar[bool] = True
    #: keys travel as one JSON array (see _keys), so a statement takes many
    key_chunk: ClassVar[int] = 50_000
    upsert_chunk: ClassVar[int] = 50_000
    missing_table_words: ClassVar[tuple[tuple[str, ...], ...]] = (("relation", "does not exist"),)
    missing_column_words: ClassVar[tuple[tuple[str, ...], ...]] = (("column", "does not exist"),)
    folds: ClassVar[bool] = True
    #: compiled folded writes (see fold), by driver, tables and shape: a few per process
    _folded: ClassVar[dict[Hashable, tuple[str, dict[str, Any]]]] = {}

    def channel(self, tables: Tables) -> str:
        # NOTIFY channels are identifiers: 63 bytes at most, longer ones cut by the server
        return f"{tables.schema or 'public'}.{tables.prefix}changes"[:63]

    def engine_options(self, pooling: Pooling) -> dict[str, Any]:
        # prepare_threshold None: psycopg prepares nothing on the server.
        # Behind a transaction pooler (PgBouncer) the next transaction runs on
        # another server connection, where a prepared name is missing or
        # already taken by another client.
        return {
            "pool_pre_ping": True,
            # no hstore lookup on the first connection: revstore has no hstore
            # column, and the lookup is four more round trips at worker start
            "use_native_hstore": False,
            "connect_args": {"connect_timeout": 5, "application_name": "revstore",
                             "prepare_threshold": pooling.prepare_threshold, **_timeouts(pooling.timeout)},
            "pool_size": pooling.size,
            "max_overflow": pooling.max_overflow,
        }

    def seconds_left(self, expires_at: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.date_part("epoch", expires_at - func.now())

    def infinity(self) -> ColumnElement[Any]:
        return literal_column("'Infinity'::float8")

    def _keys(self, keys: Sequence[Sequence[Any]], names: Sequence[str] = ("kind", "header", "value")) -> Any:
        """``keys`` as a relation of columns ``names`` built from one JSON parameter.

        Row-value IN lists and multi-row VALUES carry three or more
        parameters per key: psycopg re-parses such statements every time,
        and PostgreSQL plans a 2,000-key IN list as 2,000 ORs (seconds on a
        large table).  One JSON array of ``[kind, header, value]`` makes a
        short statement and an index join; JSON because psycopg serialises
        it in C, where it quotes each element of a text array in Python.
        A JSON null becomes SQL NULL.
        """
        key = column("key", postgresql.JSON)
        rows = func.json_array_elements(
            bindparam("keys", [list(k) for k in keys], type_=postgresql.JSON)
        ).table_valued(key).render_derived()
        return select(*(rows.c.key[i].astext.label(name) for i, name in enumerate(names))).subquery()

    def key_in(self, table: Table, keys: Sequence[Key]) -> ColumnElement[bool]:
        return tuple_(table.c.kind, table.c.header, table.c.value).in_(select(*self._keys(keys).c))

    def insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def upsert(self, conn: Connection, table: Table, keys: StoredKeys, shared: dict[str, Any],
               merge: Merge, notify: tuple[str, int] | None = None) -> int:
        # The keys as JSON, the shared values once: a multi-row VALUES list
        # of eleven parameters per row was most of the cost of a 10,000-id revoke.
        source = key_source()
        values = [cast(literal(v, table.c[name].type), table.c[name].type) for name, v in shared.items()]
        insert = self.insert(table).from_select([*KEY_COLUMNS, *shared], select(*source.c, *values))
        # counted by the server rather than one row sent back per key, and
        # the listeners told in the same round trip when a row changed
        count = func.count()
        columns = [count] if notify is None else [
            count, case((count > 0, func.pg_notify(notify[0], str(notify[1]))), else_=None)]
        params = key_params(keys, in_order=True)

        def run(plain: bool) -> int:
            stmt = insert.returning(table.c.version) if plain else self._on_conflict(insert, table, merge)
            return int(conn.execute(select(*columns).select_from(stmt.cte("written")), params).first()[0])

        return new_keys_first(conn, table, len(keys), run)

    def fold(self, conn: Connection, tables: Tables, keys: StoredKeys, write: FoldedWrite,
             channel: str) -> tuple[int | None, datetime | None, int, int]:
        """Clock, upsert, audit and NOTIFY as data-modifying CTEs of one statement, compiled once per shape.

        The clock row's lock is taken by the statement's first CTE and held
        to commit, as a separate UPDATE would.  The conflicting rows the
        upsert merges into are the latest committed ones whatever the
        statement's snapshot (ON CONFLICT locks and reads them), so waiting
        for the clock inside the statement decides nothing on stale rows.
        The statement's SQL is run as text: building and compiling it cost
        a worker's write-through more than its round trips.
        """
        params = {**write.params, **key_params(keys, in_order=write.covered is None), "revstore_channel": channel}

        def run(plain: bool) -> Any:
            shape = (conn.dialect.driver, tables.prefix, tables.schema, write.shape, plain)
            compiled = self._folded.get(shape)
            if compiled is None:
                compiled = self._folded[shape] = compile_fold(self, conn, tables, write, plain)
            return conn.exec_driver_sql(compiled[0], {**compiled[1], **params}).one()

        # a covered check writes keys that mostly have rows (a broadcast its client wrote): the upsert
        row = run(False) if write.covered is not None else new_keys_first(conn, tables.revocations, len(keys), run)
        version, now, changed = row[0], row[1], int(row[2] or 0)
        written = int(row[5]) if write.covered is not None else len(keys)
        return version, None if now is None else self.as_datetime(now), changed, written

    def delete_expired(self, conn: Connection, table: Table, expired: Callable[[Any], ColumnElement[bool]],
                       batch: int) -> list[int]:
        """Rows found by ``ctid``, skipping those another cleaner holds.

        Keyed by (kind, header, value), the planner hash-joined the whole
        table for every batch (a third of a second per 5,000 rows at a
        million); by ``ctid`` it fetches exactly the locked rows.
        """
        victim = table.alias("victim")
        ctids = select(literal_column("victim.ctid")).select_from(victim).where(expired(victim))
        # oldest first: an index scan on expires_at, whose entries for
        # deleted rows are flagged dead as it passes, so later batches
        # do not wade through the rows earlier ones deleted
        ctids = ctids.order_by(victim.c.expires_at).limit(batch).with_for_update(skip_locked=True)
        match = literal_column(f"{table.name}.ctid") == func.any(func.array(ctids.scalar_subquery()))
        return list(conn.execute(table.delete().where(match).returning(table.c.version)).scalars())

    def _raw_sql(self, conn: Connection, stmt: Any) -> tuple[str, dict[str, Any]]:
        """``stmt`` as SQL text and its bound parameters, for a driver cursor."""
        compiled = stmt.compile(dialect=conn.dialect)
        return str(compiled), dict(compiled.params)

    def task_ids(self, conn: Connection, stmt: Select[Any], chunk: int) -> Iterator[tuple[list[str], array]]:
        packed = self._packed(conn, stmt)
        if packed is not None:
            yield packed
            return
        # plain tuples from a server-side cursor: no Row objects
        cursor = conn.connection.driver_connection.cursor(name="revstore_load", binary=True)  # type: ignore[union-attr]
        sql, params = self._raw_sql(conn, stmt)
        yield from stream_id_rows(conn, cursor, sql, params, chunk)

    def _packed(self, conn: Connection, stmt: Any) -> tuple[list[str], array] | None:
        """``(value, remaining)`` rows of ``stmt`` aggregated server-side; None: stream them instead.

        Three Python objects on the wire instead of three million.  None when
        an id contains the separator (the pieces would not match the count)
        or the aggregate fails (PostgreSQL caps a value at 1 GB, some 25
        million ids): a savepoint keeps the transaction usable.
        """
        rows = stmt.subquery()
        value, remaining = rows.c
        packed = select(
            func.count(),
            func.string_agg(value, literal_column("E'\\n'")),
            # 8 big-endian bytes per float: one bytes object, no float objects
            func.string_agg(func.float8send(remaining), literal_column("''::bytea")),
        )
        cursor = conn.connection.driver_connection.cursor(binary=True)  # type: ignore[union-attr]
        savepoint = conn.begin_nested()
        try:
            cursor.execute(*self._raw_sql(conn, packed))
            count, joined, left = cursor.fetchone()
        except conn.dialect.loaded_dbapi.Error:
            savepoint.rollback()
            return None
        finally:
            cursor.close()
        savepoint.commit()
        ids = joined.split("\n") if count else []
        if len(ids) != count:
            return None
        # libpq keeps its input buffer as large as the largest message (the
        # whole snapshot): close this connection after use, not pool it.  A
        # small reply leaves nothing to free; the connection stays pooled and
        # the next read needs no new one (a connect is several round trips).
        if len(joined or "") + len(left or b"") > KEEP_CONNECTION_BELOW:
            conn.detach()
        if not count:
            return [], array("d")
        remaining_ = array("d", bytes(left))
        if sys.byteorder == "little":
            remaining_.byteswap()
        return ids, remaining_

    def limit_lock_wait(self, connection: Connection, seconds: float) -> None:
        connection.execute(select(func.set_config("lock_timeout", f"{max(1, round(seconds * 1000))}ms", False)))

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return getattr(getattr(exc, "orig", exc), "sqlstate", None) == "55P03"  # lock_not_available

    def notify(self, conn: Connection, channel: str, version: int) -> None:
        conn.execute(select(func.pg_notify(channel, str(version))))

    def listener(self, url: URL, channel: str, on_change: Callable[[], None], name: str, *,
                 probe: Callable[[str], None], check_interval: float, fallback_interval: float,
                 shown_as: str) -> Listener | None:
        from .postgresql_listen import Listener as PgListener

        return PgListener(url, channel, on_change, probe, name, check_interval, fallback_interval, shown_as=shown_as)

    def server_identity(self, conn: Connection | None) -> dict[str, ColumnElement[Any]]:
        """The cluster's system identifier and the timeline it writes on, where the role may read them.

        The system identifier (``pg_control_system()``) is new for a new
        cluster (``initdb``, a restore into a new one); a streaming replica
        shares its primary's.  The timeline is new after a promotion or a
        point-in-time recovery.  It is read from the current WAL file's name,
        not from ``pg_control_checkpoint()``, which shows the new one only
        once the checkpoint a promotion requests is done (seconds later, and
        the promoted server takes writes meanwhile); NULL on a standby.
        Both functions are executable by every role by default; a DBA may
        revoke them, and then that part is not compared.
        """
        lsn = func.pg_walfile_name(func.pg_current_wal_lsn())
        candidates = {
            "system_identifier": select(cast(literal_column("system_identifier"), Text))
            .select_from(func.pg_control_system()).scalar_subquery(),
            "timeline": case((func.pg_is_in_recovery(), None), else_=func.substr(lsn, 1, 8)),
        }
        if conn is None:
            return candidates
        usable = {}
        for name, expr in candidates.items():
            try:
                with conn.begin_nested():
                    conn.execute(select(expr))
            except DBAPIError:
                continue
            usable[name] = expr
        return usable

    def extra_stats(self, conn: Connection, channel: str) -> dict[str, Any]:
        """Workers whose LISTEN connection on our channel is open right now, and the connections revstore holds."""
        rows = conn.execute(
            text(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'revstore-listener%' "
                "AND query LIKE :pattern ORDER BY application_name"
            ),
            {"pattern": f'%LISTEN%"{channel}"%'},
        ).scalars()
        listeners = [name.removeprefix("revstore-listener ") for name in rows]
        return {"listeners": listeners, "connections": self._connections(conn)}

    def _connections(self, conn: Connection) -> dict[str, int]:
        """Server connections revstore holds, as ``role/application`` -> count.

        Listener names (one per worker) are counted as one group.  Behind a
        pooler these are the pooler's server connections, named after the
        last client that used them.
        """
        app = column("application_name")
        name = case((app.like("revstore-listener %"), literal("revstore-listener")), else_=app)
        rows = conn.execute(
            select(column("usename"), name, func.count())
            .select_from(text("pg_stat_activity"))
            .where(column("datname") == func.current_database(), app.like("revstore%"))
            .group_by(column("usename"), name)
            .order_by(column("usename"), name)
        ).all()
        return {f"{role}/{app_name}": int(n) for role, app_name, n in rows}

    def role_sql(self, tables: Tables, admin_role: str, worker_role: str, *, create_role: bool) -> str:
        from .postgresql_roles import admin_sql, worker_sql

        admin = admin_sql(tables, admin_role, create_role=create_role)
        worker = worker_sql(tables, worker_role, create_role=create_role)
        return f"{admin}\n{worker}"
