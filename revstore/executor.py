"""The one connection and error core every door of the store shares.

The doors (:mod:`revstore.reads`, :mod:`revstore.writes`,
:mod:`revstore.purge`, :mod:`revstore.queries`) each hold the same
:class:`Executor`: one engine and pool per store, one place that turns a
driver's error into a one-line message an operator can act on, one clock
row that orders writes, and one mapping between rows and
:class:`~revstore.records.Revocation`.

Time comes from the database server (``now()``), never from the caller's
clock: workers on hosts with skewed clocks still agree on what has expired.
What differs between databases is asked of a backend from
:mod:`revstore.backends`, picked by the URL's dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from operator import methodcaller
from typing import Any, Generic, TypeVar, overload

from sqlalchemy import Engine, create_engine, select, update
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import NoSuchModuleError, OperationalError, ProgrammingError

from . import backends as _backends
from . import config as _config
from . import keys as _keys
from .backends import Backend, Pooling
from .errors import ConfigurationError, DatabaseUnavailable, SchemaError
from .identity import DbIdentity
from .records import DEFAULT, Revocation, Target, default_revoker, validate_expires, validate_label
from .schema import Tables, build_tables

T = TypeVar("T")


class Executor:
    """One database, its tables and pool; runs each unit of work in one transaction. Thread-safe."""

    def __init__(
        self,
        url: str | URL,
        *,
        schema: str | None = None,
        table_prefix: str = _config.DEFAULT_TABLE_PREFIX,
        default_expires: float | None = _config.DEFAULT_EXPIRES,
        tombstone_ttl: float = _config.DEFAULT_TOMBSTONE_TTL,
        audit_ttl: float = _config.DEFAULT_AUDIT_TTL,
        engine: Engine | None = None,
        pool_size: int = _config.DEFAULT_POOL_SIZE,
        max_overflow: int = _config.DEFAULT_POOL_MAX_OVERFLOW,
        prepare_threshold: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.url = _config.normalize_url(str(url)) if not isinstance(url, URL) else url
        self.tables: Tables = build_tables(table_prefix, schema)
        self.default_expires = default_expires
        self.tombstone_ttl = tombstone_ttl
        self.audit_ttl = audit_ttl
        #: what this database does its own way (see revstore.backends)
        self.backend: Backend = _backends.for_dialect(
            engine.dialect.name if engine is not None else self.url.get_backend_name())
        self.engine = engine or self._make_engine(Pooling(pool_size, max_overflow, prepare_threshold, timeout))
        self.returning = self.backend.returns_from_update(self.engine)
        #: the channel writers signal on where the database can push changes (one per installation)
        self.channel = self.backend.channel(self.tables)
        #: the server's self-description this role may read (see identity()), probed at first use
        self._server_identity: dict[str, Any] | None = None
        self._identity_built: tuple[dict[str, Any], list[Any]] | None = None

    def _make_engine(self, pooling: Pooling) -> Engine:
        try:
            engine = create_engine(self.url, **self.backend.engine_options(pooling))
        except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
            raise ConfigurationError(
                f"revstore: no database driver for {_config.mask_url(self.url)} ({exc}); {self.backend.driver_hint}"
            ) from None
        self.backend.configure_engine(engine)
        return engine

    def connect(self) -> Connection:
        try:
            return self.engine.connect()
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"revstore: cannot connect to {_config.mask_url(self.url)}: {short_error(exc)}; "
                "check that the database is running and revstore_url is right"
            ) from None

    def run(self, fn: Callable[[Connection], T], *, one_statement: bool = False) -> T:
        """Run ``fn(conn)`` in one transaction, translating errors for users.

        ``one_statement``: ``fn`` runs a single statement, which is its own
        transaction in autocommit mode: no BEGIN and COMMIT round trips.
        """
        conn = self.connect()
        try:
            if one_statement:
                return fn(conn.execution_options(isolation_level="AUTOCOMMIT"))
            with conn.begin():
                return fn(conn)
        except (ProgrammingError, OperationalError) as exc:
            where = _config.mask_url(self.url)
            if self.backend.is_missing_column(exc):  # new code before its expand step ran
                raise SchemaError(
                    f"revstore: the revstore tables in {where} are older than this revstore "
                    f"({short_error(exc)}); run `revstore db upgrade` as a database admin"
                ) from None
            if self.backend.is_missing_table(exc):
                raise SchemaError(
                    f"revstore: revstore tables are missing in {where} ({short_error(exc)}); "
                    "run `revstore db upgrade` as a database admin"
                ) from None
            if isinstance(exc, ProgrammingError):
                raise
            if exc.connection_invalidated:  # the server or the network went away mid-transaction
                raise DatabaseUnavailable(
                    f"revstore: lost the connection to {where}: {short_error(exc)}; "
                    "check that the database is running and revstore_url is right"
                ) from None
            raise DatabaseUnavailable(f"revstore: database error on {where}: {short_error(exc)}") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ time

    def now(self) -> Any:
        """The database server's current time as a SQL expression."""
        return self.backend.now()

    def db_now(self, conn: Connection) -> datetime:
        return self.backend.as_datetime(conn.execute(select(self.now())).scalar_one())

    def expiry(self, now: datetime, expires: Any) -> datetime | None:
        """When a write at ``now`` with ``expires`` (seconds, None, or DEFAULT) stops applying."""
        seconds = validate_expires(self.default_expires if expires is DEFAULT else expires)
        return None if seconds is None else now + timedelta(seconds=seconds)

    # ----------------------------------------------------------------- clock

    def bump_at(self, conn: Connection) -> tuple[int, datetime]:
        """Take the clock lock and a new version, and the database's time once it is held.

        The clock row orders commits (see revstore.schema).  One statement
        where the database returns from an UPDATE: a worker's write-through
        is a handful of round trips, and each is a wait for the
        interpreter's lock in a busy worker.
        """
        clock = self.tables.clock
        stmt = update(clock).where(clock.c.id == 1).values(version=clock.c.version + 1)
        if self.returning:
            row = conn.execute(stmt.returning(clock.c.version, self.now())).one_or_none()
            version, now = (None, None) if row is None else (row[0], self.backend.as_datetime(row[1]))
        else:
            conn.execute(stmt)
            version = conn.execute(select(clock.c.version).where(clock.c.id == 1)).scalar_one_or_none()
            now = self.db_now(conn)
        if version is None or now is None:
            raise SchemaError("revstore: the clock row is missing; run `revstore db upgrade`")
        return int(version), now

    def notify(self, conn: Connection, version: int) -> None:
        self.backend.notify(conn, self.channel, version)

    # ------------------------------------------------------------------ keys

    def key_chunks(self, items: list[Target], size: int | None = None) -> Iterator[list[Target]]:
        """``items`` in pieces of the size one statement takes on this backend (a lookup's, by default)."""
        size = size or self.backend.key_chunk
        for start in range(0, len(items), size):
            yield items[start : start + size]

    def key_in(self, items: Sequence[Target | str]) -> Any:
        """A WHERE condition: the row's key is one of ``items`` (targets, or plain task ids)."""
        return self.backend.key_in(self.tables.revocations, [stored_key(t) for t in items])

    # ------------------------------------------------------------------ rows

    def columns(self) -> list[Any]:
        """The columns :meth:`revocation` reads, in its order."""
        t = self.tables.revocations
        return [
            t.c.kind, t.c.header, t.c.value, t.c.terminate, t.c.signal, t.c.reason,
            t.c.revoked_by, t.c.revoked_at, t.c.expires_at, t.c.version, t.c.active, t.c.header_full, t.c.value_full,
        ]

    def revocation(self, row: Sequence[Any], now: datetime) -> Revocation:
        """A row of :meth:`columns` as a Revocation, its remaining time counted from the database's ``now``."""
        kind, header, value, terminate, sig, reason, by, at, exp, version, active, header_full, value_full = row
        exp = self.backend.like_now(exp, now)
        return Revocation(
            target_of(kind, header, value, header_full, value_full), bool(terminate), sig, reason, by, at, exp,
            int(version), bool(active), None if exp is None else (exp - now).total_seconds(),
        )

    # -------------------------------------------------------------- identity

    def identity_columns(self, conn: Connection) -> list[Any]:
        """Scalar SQL for what the database says it is: the installation id, then the server's own."""
        if self._server_identity is None:
            self._server_identity = self.backend.server_identity(conn)
        if self._identity_built is None or self._identity_built[0] is not self._server_identity:
            # the same list while the server's identity stays: readers cache statements built on it
            self._identity_built = (self._server_identity, self._identity_columns(self._server_identity))
        return self._identity_built[1]

    def unprobed_identity_columns(self) -> tuple[list[Any], Callable[[], None]]:
        """:meth:`identity_columns` without probing the server's, and what to call once a statement read them all.

        Before the first probe these are every candidate the backend has
        (``Backend.server_identity(None)``): a statement that reads them
        all without error proves the role may read each, which is all the
        probes (a savepoint each, three round trips) would have found out.
        """
        server = self._server_identity
        if server is None:
            server = self.backend.server_identity(None)

        def proven() -> None:
            self._server_identity = server

        return self._identity_columns(server), proven

    def _identity_columns(self, server: dict[str, Any]) -> list[Any]:
        info = self.tables.schema_info
        return [select(info.c.installation_id).where(info.c.id == 1).scalar_subquery(), *server.values()]

    def identity(self, values: Sequence[Any]) -> DbIdentity:
        """What :meth:`identity_columns` read, as a DbIdentity."""
        installation, *server = values
        return DbIdentity(installation, dict(zip(self._server_identity or {}, server)))

    # ------------------------------------------------------------------ pool

    def dispose(self) -> None:
        self.engine.dispose()

    def release_idle(self) -> None:
        """Close the pooled connections no thread is using (``revstore_pool_idle_timeout``)."""
        if self.engine.pool.checkedin():
            self.engine.dispose(close=True)


class Shared(Generic[T]):
    """An attribute of the executor, read and set through any door: one value however many doors share it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, door: None, owner: type) -> Shared[T]: ...

    @overload
    def __get__(self, door: Door, owner: type) -> T: ...

    def __get__(self, door: Door | None, owner: type) -> Shared[T] | T:
        return self if door is None else getattr(door.executor, self.name)  # type: ignore[no-any-return]

    def __set__(self, door: Door, value: T) -> None:
        setattr(door.executor, self.name, value)


class Door:
    """What every door holds: the shared executor, and the names callers read (and tests tune) on a store."""

    url: Shared[URL] = Shared()
    tables: Shared[Tables] = Shared()
    backend: Shared[Backend] = Shared()
    engine: Shared[Engine] = Shared()
    #: the channel writers signal on where the database can push changes (one per installation)
    channel: Shared[str] = Shared()
    default_expires: Shared[float | None] = Shared()
    tombstone_ttl: Shared[float] = Shared()
    audit_ttl: Shared[float] = Shared()

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def dispose(self) -> None:
        self.executor.dispose()

    def release_idle(self) -> None:
        """Close the pooled connections no thread is using (``revstore_pool_idle_timeout``)."""
        self.executor.release_idle()


def actor(by: str | None) -> str:
    """Who a write is recorded under: ``by`` if given (validated), else this process's user@host."""
    return validate_label(by, "revoked_by") if by is not None else default_revoker()


#: Whether a task's key column holds a digest (see revstore.keys): a C-level test per id.
is_digest = methodcaller("startswith", _keys.DIGEST_PREFIX)


def target_of(kind: str, header: str, value: str, header_full: str | None, value_full: str | None) -> Target:
    """The target a row stands for: its full texts where the key columns hold digests."""
    return Target(
        kind,  # type: ignore[arg-type]
        value if value_full is None else _keys.decode_full(value_full),
        header if header_full is None else _keys.decode_full(header_full),
    )


def stored_keys(items: Sequence[Target | str]) -> _keys.StoredKeys:
    """The key columns of ``items`` (plain task ids or targets, see :func:`records.unique_keys`).

    Task ids that fit their column, the whole of a bulk revoke, become a
    list of strings after a few C-level checks of the entire list; a
    Python call per id (a Target, its key tuple, a dict) was half the cost
    of a 10,000-id revoke.
    """
    if not items:
        return _keys.StoredKeys()
    if isinstance(items[0], str):
        ids = list(items)
        if _keys.all_fit(ids):  # type: ignore[arg-type]
            return _keys.StoredKeys(ids)  # type: ignore[arg-type]
        targets: Sequence[Target] = [Target.task(i) for i in ids]  # type: ignore[arg-type]
    else:
        targets = items  # type: ignore[assignment]
        if all(t.kind == "task" for t in targets):
            ids = [t.value for t in targets]
            if _keys.all_fit(ids):
                return _keys.StoredKeys(ids)
    found = _keys.StoredKeys()
    for t in targets:
        (kind, header, value), header_full, value_full = _keys.stored(t.kind, t.header, t.value)
        if kind == "task" and header_full is None and value_full is None:
            found.task_ids.append(value)
        else:
            found.rows.append((kind, header, value, header_full, value_full))
    return found


def stored_key(item: Target | str) -> _keys.Key:
    """The primary key ``item`` (a target, or a plain task id) is stored under."""
    if isinstance(item, str):
        return _keys.stored("task", "", item)[0]
    return _keys.stored(item.kind, item.header, item.value)[0]


def stored_rows(items: Sequence[Target]) -> list[dict[str, str | None]]:
    """The key columns each of ``items`` is stored under (see revstore.keys)."""
    rows = []
    for target in items:
        (kind, header, value), header_full, value_full = _keys.stored(target.kind, target.header, target.value)
        rows.append({"kind": kind, "header": header, "value": value, "header_full": header_full,
                     "value_full": value_full})
    return rows


def short_error(exc: BaseException) -> str:
    """First line of a driver error, with any URL password masked."""
    orig = getattr(exc, "orig", None) or exc
    text_ = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return _config.mask_url(text_) if "://" in text_ else text_
