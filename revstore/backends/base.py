"""What the store core asks of a database, and the defaults most databases share.

The core (the store's doors over :mod:`revstore.executor`) holds everything
that is the same on every database: the API, validation, versioning through
the clock row, the rules of an upsert (what a re-revoke may change), expiry
by database time.  A backend module holds only what differs: how to say
"now", how to send many keys in one statement, which INSERT dialect
resolves conflicts, how a large load or a batched delete runs fast, whether
the database can push changes to workers, how its driver words an error,
how it keeps time zones, and its grants.  Adding a database means writing
one module that implements :class:`Backend`; nothing outside
``revstore/backends`` checks which database it is talking to
(``tests/test_layers.py`` holds to it).

:class:`SqlBackend` implements every method in portable SQLAlchemy Core, so a
module overrides only what its database does differently or better.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from sqlalchemy import Engine, Table, bindparam, func, select, tuple_
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ColumnElement, Select

from ..errors import ConfigurationError

if TYPE_CHECKING:  # schema imports this package's column types: no import back at run time
    from ..keys import StoredKeys
    from ..schema import Tables
    from ..writes import FoldedWrite

#: Where ``revstore db grants`` prints this database's role SQL (the
#: PostgreSQL and MySQL backends write the two sections under these marks).
WORKER_MARK = "-- revstore: worker role"
ADMIN_MARK = "-- revstore: admin role"

#: A stored key: ``(kind, header, value)``, the primary key of a row.
Key = tuple[str, str, str]

#: The core's rule for a conflicting insert: given the existing row's columns
#: (``old``) and the proposed row's (``new``), the column values to set and
#: the condition under which the row changes at all.  Backends only translate
#: it into their dialect (``ON CONFLICT ... DO UPDATE ... WHERE`` and the like).
Merge = Callable[[Any, Any], tuple[dict[str, Any], ColumnElement[bool]]]


@dataclass(frozen=True)
class Pooling:
    """The connections a process keeps (``revstore_pool_*``) and what the driver may keep on the server."""

    size: int
    max_overflow: int
    #: executions before a statement is prepared on the server; None: never
    #: (a transaction pooler hands each transaction another server connection)
    prepare_threshold: int | None = None
    #: seconds the driver waits to connect and for each answer, for callers
    #: that must give up fast (the patched ``app.control.revoke``); None: the
    #: driver's connect timeout of a few seconds and no read timeout, since a
    #: worker's large load may take a while and its sync thread can wait
    timeout: float | None = None


class Listener(Protocol):
    """A background wake-up from the database (PostgreSQL LISTEN/NOTIFY)."""

    live: bool
    reconnects: int
    #: why it is not live (None while it is), for status replies
    problem: str | None

    def start(self) -> None: ...

    def stop(self, timeout: float = 3.0) -> None: ...


class Backend(Protocol):
    """The database-specific half of the store (:class:`revstore.executor.Executor` and its doors)."""

    #: SQLAlchemy's dialect name (``postgresql``, ``sqlite``, ``mysql``...):
    #: for messages and to pick this module, never for branching elsewhere.
    name: ClassVar[str]

    #: Driver used when the URL names none (``postgresql://`` -> psycopg):
    #: revstore depends on one driver per database, not on SQLAlchemy's default.
    default_driver: ClassVar[str | None]

    #: What to install when that driver is missing (shown in the error).
    driver_hint: ClassVar[str]

    #: Whether ``revstore_schema`` means something here (if not, a URL with one is refused).
    supports_schema: ClassVar[bool]

    #: Keys per statement: as many as amortise round trips while staying
    #: under the driver's bound-parameter and the server's statement limits.
    key_chunk: ClassVar[int]

    #: Keys per upsert (the bulk revoke's statement), where the backend sends
    #: them more compactly than a lookup's key list.
    upsert_chunk: ClassVar[int]

    #: Rows per INSERT binding eleven values each (``revstore import``), under the driver's parameter limit.
    row_chunk: ClassVar[int]

    #: Whether :meth:`fold` writes a revoke as one statement (else the core writes it step by step).
    folds: ClassVar[bool]

    def canonical_url(self, url: URL) -> URL:
        """``url`` naming the same database from any working directory (a local state file's owner)."""
        ...

    def channel(self, tables: Tables) -> str:
        """The channel writers signal on, one per installation (a valid name where changes are pushed)."""
        ...

    #: How the driver words "no such table" and "no such column": each entry
    #: the words one message holds together (lower case).  Drivers agree on
    #: no error code for them, so their texts are what tells them apart.
    missing_table_words: ClassVar[tuple[tuple[str, ...], ...]]
    missing_column_words: ClassVar[tuple[tuple[str, ...], ...]]

    def is_missing_table(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a table does not exist (``revstore db upgrade`` never ran)."""
        ...

    def is_missing_column(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a column does not exist (new code before its expand step ran)."""
        ...

    def returns_from_update(self, engine: Engine) -> bool:
        """Whether an UPDATE can hand back what it wrote (``RETURNING``): one round trip less per write."""
        ...

    def engine_options(self, pooling: Pooling) -> dict[str, Any]:
        """``create_engine`` keyword arguments: timeouts, pool, isolation.

        Each database needs its own to make concurrent writers queue rather
        than fail, and to give up on an unreachable server within seconds.
        """
        ...

    def configure_engine(self, engine: Engine) -> None:
        """Per-connection set-up (event listeners) once the engine exists."""
        ...

    def prepare_migrations(self, connection: Connection) -> None:
        """File- or server-level settings the admin applies once, before ``db upgrade``."""
        ...

    def limit_lock_wait(self, connection: Connection, seconds: float) -> None:
        """Make this session's statements give up after waiting ``seconds`` for a lock.

        A migration that waits behind a long transaction holds its place in
        the lock queue, and every worker's write then queues behind it: an
        admin would rather see the migration fail and retry it.
        """
        ...

    def is_lock_timeout(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a statement giving up on a lock (see :meth:`limit_lock_wait`)."""
        ...

    def now(self) -> ColumnElement[Any]:
        """The server's current time as SQL, comparable with stored times.

        Expiry is decided by the database clock, never by a worker's, so
        every comparison and every written time derives from this.
        """
        ...

    def now_plus(self, seconds: float) -> ColumnElement[Any]:
        """The server's time ``seconds`` from now (negative: ago), with ``seconds`` a bound parameter."""
        ...

    def as_datetime(self, value: Any) -> datetime:
        """Turn what ``SELECT now()`` returned into a datetime."""
        ...

    def column_time(self, value: datetime) -> datetime:
        """An aware datetime as this database stores it (for rows imported with their own times)."""
        ...

    def aware(self, value: Any) -> datetime:
        """A time read back from this database (a column, ``now()``, an aggregate of either) as aware UTC.

        Where the database keeps no zone, what it hands back is UTC: the
        store writes UTC and asks the server for UTC.
        """
        ...

    def like_now(self, value: datetime | None, now: datetime) -> datetime | None:
        """A stored time in the form :meth:`as_datetime` gave ``now`` (both naive or both aware), to subtract."""
        ...

    def seconds_left(self, expires_at: ColumnElement[Any]) -> ColumnElement[Any]:
        """Seconds from the server's now until ``expires_at`` (NULL stays NULL), computed by the database."""
        ...

    def infinity(self) -> ColumnElement[Any]:
        """A float infinity literal: what a never-expiring row's remaining time loads as."""
        ...

    def key_in(self, table: Table, keys: Sequence[Key]) -> ColumnElement[bool]:
        """A WHERE condition: the row's primary key is one of ``keys`` (at most ``key_chunk``)."""
        ...

    def upsert(self, conn: Connection, table: Table, keys: StoredKeys, shared: dict[str, Any],
               merge: Merge, notify: tuple[str, int] | None = None) -> int:
        """Insert a row per key of ``keys`` plus the ``shared`` column values, merging into existing rows.

        With ``notify`` (channel, version), a write that changed a row also
        does what :meth:`notify` does, in the same statement where the
        database can: a worker's write-through is a few round trips, each
        one a wait for the interpreter's lock in a busy worker.

        Each key is the primary key and the key's full texts (``header_full``,
        ``value_full``, NULL unless stored by digest).  Returns how many rows were inserted or
        changed: a write that changed nothing must not wake every worker.
        This is the hot path of a bulk revoke, so a backend sends the keys as
        compactly as its driver allows.
        """
        ...

    def upsert_rows(self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], merge: Merge) -> int:
        """Like :meth:`upsert`, each row with its own values (``revstore import``)."""
        ...

    def fold(self, conn: Connection, tables: Tables, keys: StoredKeys, write: FoldedWrite,
             channel: str) -> tuple[int | None, datetime | None, int, int] | None:
        """``write`` of ``keys`` as one statement: ``(version, now, rows changed, keys written)``; see :attr:`folds`."""
        ...

    def delete_expired(self, conn: Connection, table: Table, expired: Callable[[Any], ColumnElement[bool]],
                       batch: int) -> list[int]:
        """Delete at most ``batch`` rows matching ``expired(alias)``; the versions of the rows deleted.

        Many workers clean at once: a backend that can skip rows another
        cleaner holds should, and each batch must stay short however large
        the table is.
        """
        ...

    def task_ids(self, conn: Connection, stmt: Select[Any], chunk: int) -> Iterator[tuple[list[str], array]]:
        """The ``(id, seconds left)`` rows of ``stmt`` as id lists and float arrays.

        The start-up load of a million rows: a backend returns them in as few
        Python objects as it can (one packed piece, or ``chunk``-row pieces).
        """
        ...

    def notify(self, conn: Connection, channel: str, version: int) -> None:
        """Tell listening workers, on commit, that ``version`` was written (or do nothing)."""
        ...

    def listener(self, url: URL, channel: str, on_change: Callable[[], None], name: str, *,
                 probe: Callable[[str], None], check_interval: float, fallback_interval: float,
                 shown_as: str) -> Listener | None:
        """A listener calling ``on_change`` when anyone writes, or None where changes can only be polled.

        It is live only while it hears ``probe(its own channel)`` every
        ``check_interval``; ``fallback_interval`` is the poll it announces otherwise.
        ``shown_as``: ``url`` with its secrets masked, for log lines.
        """
        ...

    def server_identity(self, conn: Connection | None) -> dict[str, ColumnElement[Any]]:
        """What the server says of itself, as scalar SQL a poll can carry (name -> expression).

        Only what this connection's role may read (some may be refused):
        probed here, once, in savepoints; ``conn`` None: every candidate,
        unprobed (a worker's start-up read tries all in one statement).  Empty
        where nothing tells a failover or a new cluster apart (revstore.identity).
        """
        ...

    def extra_stats(self, conn: Connection, channel: str) -> dict[str, Any]:
        """Database-specific figures for ``revstore stats`` (PostgreSQL: the live listeners, connections held)."""
        ...

    def role_sql(self, tables: Tables, admin_role: str, worker_role: str, *, create_role: bool) -> str:
        """The SQL for a migrating admin role and a DML-only worker role (``revstore db grants``)."""
        ...


def stream_id_rows(conn: Connection, cursor: Any, sql: str, params: Any,
                   chunk: int) -> Iterator[tuple[list[str], array]]:
    """``(id, seconds left)`` rows from a driver cursor in pieces, as the start-up load takes them.

    A raw cursor skips SQLAlchemy's Row objects (a million of them cost more
    than the ids); its errors are re-raised as SQLAlchemy's, so the store's
    one-line messages still apply.  The cursor is closed in any case.
    """
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        cursor.execute(sql, params)
        while part := cursor.fetchmany(chunk):
            ids, left = zip(*part)
            yield list(ids), array("d", left)
    except dbapi_error as exc:
        raise DBAPIError.instance(sql, params, exc, dbapi_error) from exc
    finally:
        cursor.close()


def _says(exc: BaseException, wordings: tuple[tuple[str, ...], ...]) -> bool:
    """Whether the driver's text of ``exc`` holds all the words of one of ``wordings``."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(all(word in text for word in words) for words in wordings)


class SqlBackend:
    """Portable implementations of :class:`Backend`: override what your database does better."""

    name: ClassVar[str] = ""
    default_driver: ClassVar[str | None] = None
    driver_hint: ClassVar[str] = ""
    supports_schema: ClassVar[bool] = True
    #: SQLite allows 32766 bound parameters: 2000 rows of up to 11 stay under it
    key_chunk: ClassVar[int] = 2000
    upsert_chunk: ClassVar[int] = 2000
    row_chunk: ClassVar[int] = 2000
    folds: ClassVar[bool] = False
    missing_table_words: ClassVar[tuple[tuple[str, ...], ...]] = ()
    missing_column_words: ClassVar[tuple[tuple[str, ...], ...]] = ()

    def canonical_url(self, url: URL) -> URL:
        return url

    def channel(self, tables: Tables) -> str:
        return f"{tables.schema}.{tables.prefix}changes" if tables.schema else f"{tables.prefix}changes"

    def is_missing_table(self, exc: BaseException) -> bool:
        return _says(exc, self.missing_table_words)

    def is_missing_column(self, exc: BaseException) -> bool:
        return _says(exc, self.missing_column_words)

    def returns_from_update(self, engine: Engine) -> bool:
        # SQLAlchemy knows per dialect and server version (SQLite 3.35+, not MariaDB's UPDATE)
        return bool(getattr(engine.dialect, "update_returning", False))

    def engine_options(self, pooling: Pooling) -> dict[str, Any]:
        return {"pool_pre_ping": True}

    def configure_engine(self, engine: Engine) -> None:
        return None

    def prepare_migrations(self, connection: Connection) -> None:
        return None

    def limit_lock_wait(self, connection: Connection, seconds: float) -> None:
        return None

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return False

    def now(self) -> ColumnElement[Any]:
        return func.now()

    def now_plus(self, seconds: float) -> ColumnElement[Any]:
        return func.now() + bindparam("shift", timedelta(seconds=float(seconds)))

    def as_datetime(self, value: Any) -> datetime:
        return value  # type: ignore[no-any-return]

    def column_time(self, value: datetime) -> datetime:
        return value

    def aware(self, value: Any) -> datetime:
        value = self.as_datetime(value)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def like_now(self, value: datetime | None, now: datetime) -> datetime | None:
        if value is not None and isinstance(now, datetime) and (value.tzinfo is None) != (now.tzinfo is None):
            return value.replace(tzinfo=now.tzinfo)
        return value

    def seconds_left(self, expires_at: ColumnElement[Any]) -> ColumnElement[Any]:
        raise NotImplementedError

    def infinity(self) -> ColumnElement[Any]:
        raise NotImplementedError

    def key_in(self, table: Table, keys: Sequence[Key]) -> ColumnElement[bool]:
        return tuple_(table.c.kind, table.c.header, table.c.value).in_(list(keys))

    def insert(self, table: Table) -> Any:
        """An INSERT with this dialect's conflict clause (``on_conflict_do_update``)."""
        raise NotImplementedError

    def _on_conflict(self, stmt: Any, table: Table, merge: Merge) -> Any:
        """``stmt`` resolving key conflicts by ``merge``, returning a row per insert or change."""
        set_, where = merge(table.c, stmt.excluded)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.kind, table.c.header, table.c.value], set_=set_, where=where)
        # RETURNING counts exactly the rows inserted or changed, where
        # executemany's rowcount is unreliable across drivers.
        return stmt.returning(table.c.version)

    def upsert(self, conn: Connection, table: Table, keys: StoredKeys, shared: dict[str, Any],
               merge: Merge, notify: tuple[str, int] | None = None) -> int:
        changed = self.upsert_rows(conn, table, [{**key, **shared} for key in keys.dicts()], merge)
        if changed and notify is not None:
            self.notify(conn, *notify)
        return changed

    def upsert_rows(self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], merge: Merge) -> int:
        stmt = self._on_conflict(self.insert(table), table, merge)
        return len(conn.execute(stmt, list(rows)).all())

    def delete_expired(self, conn: Connection, table: Table, expired: Callable[[Any], ColumnElement[bool]],
                       batch: int) -> list[int]:
        victim = table.alias("victim")
        keys = select(victim.c.kind, victim.c.header, victim.c.value).where(expired(victim)).limit(batch)
        match = tuple_(table.c.kind, table.c.header, table.c.value).in_(keys)
        return list(conn.execute(table.delete().where(match).returning(table.c.version)).scalars())

    def task_ids(self, conn: Connection, stmt: Select[Any], chunk: int) -> Iterator[tuple[list[str], array]]:
        for part in conn.execute(stmt).partitions(chunk):
            ids, left = zip(*part)
            yield list(ids), array("d", left)

    def fold(self, conn: Connection, tables: Tables, keys: StoredKeys, write: FoldedWrite,
             channel: str) -> tuple[int | None, datetime | None, int, int] | None:
        return None

    def notify(self, conn: Connection, channel: str, version: int) -> None:
        return None

    def listener(self, url: URL, channel: str, on_change: Callable[[], None], name: str, *,
                 probe: Callable[[str], None], check_interval: float, fallback_interval: float,
                 shown_as: str) -> Listener | None:
        return None

    def server_identity(self, conn: Connection | None) -> dict[str, ColumnElement[Any]]:
        return {}

    def extra_stats(self, conn: Connection, channel: str) -> dict[str, Any]:
        return {}

    def role_sql(self, tables: Tables, admin_role: str, worker_role: str, *, create_role: bool) -> str:
        raise ConfigurationError(f"revstore: {self.name} has no database roles to grant; "
                                 "access is governed by who can open the database")

