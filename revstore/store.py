"""The only door to the revocation tables.

Every query revstore runs is a method of :class:`RevocationStore`.  The store
knows SQL and revocations, nothing of Celery's worker: the bootstep, the CLI
and the client API all go through it.

Time comes from the database server (``now()``), never from the caller's
clock: workers on hosts with skewed clocks still agree on what has expired.

This module is the same on every database; what differs (SQL dialect, bulk
transfer tricks, change notification) is asked of a backend from
:mod:`revstore.backends`, picked by the URL's dialect.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from operator import methodcaller
from typing import Any

from sqlalchemy import Engine, and_, case, create_engine, func, literal, null, or_, select, true, tuple_, update
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError, ProgrammingError

from . import audit as _audit
from . import backends as _backends
from . import keys as _keys
from . import config as _config
from .backends import Backend, Listener, Pooling
from .errors import ConfigurationError, DatabaseUnavailable, InvalidInput, SchemaError
from .records import (
    Changes,
    Kind,
    Revocation,
    Snapshot,
    Target,
    WriteResult,
    as_target,
    default_revoker,
    gc_paused,
    normalize_signal,
    unique_targets,
    validate_expires,
    validate_key,
    validate_label,
)
from .identity import DbIdentity
from .schema import KINDS, MAX_REASON_LENGTH, REWOUND_NOTE_LENGTH, Tables, build_tables

#: The names other modules import from here: the store and what it takes and returns.
__all__ = [
    "DEFAULT", "Changes", "Kind", "Revocation", "RevocationStore", "Snapshot", "Target", "WriteResult",
    "as_target", "default_revoker", "gc_paused", "normalize_signal", "short_error", "unique_targets", "validate_expires",
    "validate_key", "validate_label",
]

#: Rows per INSERT of ``put_rows`` (each row its own eleven parameters):
#: under every driver's bound-parameter limit (SQLite: 32766).
WRITE_CHUNK = 2000

#: See _upsert: how much later a re-revoke's expiry must be to rewrite the row.
EXTEND_SLACK = timedelta(seconds=60)

#: Sentinel meaning "use the store's default expiry".
DEFAULT: Any = object()


class RevocationStore:
    """Reads and writes revocations; safe to share between threads."""

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
        self._returning = bool(getattr(self.engine.dialect, "update_returning", False))
        #: the server's self-description this role may read (see identity()), probed at first use
        self._server_identity: dict[str, Any] | None = None

    @classmethod
    def from_settings(cls, settings: _config.Settings, **kwargs: Any) -> RevocationStore:
        if settings.url is None:
            raise ConfigurationError("revstore: no database URL; set revstore_url, REVSTORE_URL or pass --url")
        return cls(
            settings.url,
            schema=settings.schema,
            table_prefix=settings.table_prefix,
            default_expires=settings.default_expires,
            tombstone_ttl=settings.tombstone_ttl,
            audit_ttl=settings.audit_ttl,
            pool_size=settings.pool_size,
            max_overflow=settings.pool_max_overflow,
            prepare_threshold=settings.prepare_threshold,
            **kwargs,
        )

    # ----------------------------------------------------------------- setup

    def _make_engine(self, pooling: Pooling) -> Engine:
        try:
            engine = create_engine(self.url, **self.backend.engine_options(pooling))
        except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
            raise ConfigurationError(
                f"revstore: no database driver for {_config.mask_url(self.url)} ({exc}); {self.backend.driver_hint}"
            ) from None
        self.backend.configure_engine(engine)
        return engine

    def dispose(self) -> None:
        self.engine.dispose()

    def release_idle(self) -> None:
        """Close the pooled connections no thread is using (``revstore_pool_idle_timeout``)."""
        if self.engine.pool.checkedin():
            self.engine.dispose(close=True)

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"revstore: cannot connect to {_config.mask_url(self.url)}: {short_error(exc)}; "
                "check that the database is running and revstore_url is right"
            ) from None

    def _run(self, fn: Any, *, write: bool = False) -> Any:
        """Run ``fn(conn)`` in one transaction, translating errors for users."""
        conn = self._connect()
        try:
            with conn.begin():
                return fn(conn)
        except (ProgrammingError, OperationalError) as exc:
            if _is_missing_column(exc):  # new code before its expand step ran
                raise SchemaError(
                    f"revstore: the revstore tables in {_config.mask_url(self.url)} are older than this revstore "
                    f"({short_error(exc)}); run `revstore db upgrade` as a database admin"
                ) from None
            if _is_missing_table(exc):
                raise SchemaError(
                    f"revstore: revstore tables are missing in {_config.mask_url(self.url)} ({short_error(exc)}); "
                    "run `revstore db upgrade` as a database admin"
                ) from None
            if isinstance(exc, ProgrammingError):
                raise
            if exc.connection_invalidated:  # the server or the network went away mid-transaction
                raise DatabaseUnavailable(
                    f"revstore: lost the connection to {_config.mask_url(self.url)}: {short_error(exc)}; "
                    "check that the database is running and revstore_url is right"
                ) from None
            raise DatabaseUnavailable(
                f"revstore: database error on {_config.mask_url(self.url)}: {short_error(exc)}"
            ) from None
        finally:
            conn.close()

    # ------------------------------------------------------ SQL time helpers

    def _now(self) -> Any:
        """The database server's current time as a SQL expression."""
        return self.backend.now()

    def _db_now(self, conn: Connection) -> datetime:
        return self.backend.as_datetime(conn.execute(select(self._now())).scalar_one())

    def _remaining(self, expires_at: datetime | None, now: datetime) -> float | None:
        if expires_at is None:
            return None
        return (expires_at - now).total_seconds()

    def _expiry(self, now: datetime, expires: Any) -> datetime | None:
        seconds = validate_expires(self.default_expires if expires is DEFAULT else expires)
        return None if seconds is None else now + timedelta(seconds=seconds)

    # --------------------------------------------------------------- writes

    def _bump(self, conn: Connection) -> int:
        """Take the clock lock and a new version: it orders commits (see schema)."""
        return self._bump_at(conn)[0]

    def _bump_at(self, conn: Connection) -> tuple[int, datetime]:
        """Take the clock lock and a new version, and the database's time once it is held.

        One statement where the database returns from an UPDATE: a worker's
        write-through is a handful of round trips, and each is a wait for
        the interpreter's lock in a busy worker.
        """
        clock = self.tables.clock
        stmt = update(clock).where(clock.c.id == 1).values(version=clock.c.version + 1)
        if self._returning:
            row = conn.execute(stmt.returning(clock.c.version, self._now())).one_or_none()
            version, now = (None, None) if row is None else (row[0], self.backend.as_datetime(row[1]))
        else:
            conn.execute(stmt)
            version = conn.execute(select(clock.c.version).where(clock.c.id == 1)).scalar_one_or_none()
            now = self._db_now(conn)
        if version is None or now is None:
            raise SchemaError("revstore: the clock row is missing; run `revstore db upgrade`")
        return int(version), now

    def _notify(self, conn: Connection, version: int) -> None:
        self.backend.notify(conn, self.channel, version)

    def notify(self, channel: str) -> None:
        """Notify ``channel`` the way writers do, pooler included (a listener's liveness probe)."""
        self._run(lambda conn: self.backend.notify(conn, channel, 0))

    @property
    def channel(self) -> str:
        """The channel writers signal on where the database can push changes (one per installation)."""
        return f"{self.tables.schema or 'public'}.{self.tables.prefix}changes"[:63]

    def listener(self, on_change: Any, name: str, *, url: URL | None = None,
                 check_interval: float = _config.DEFAULT_LISTEN_CHECK_INTERVAL,
                 fallback_interval: float = _config.DEFAULT_SYNC_INTERVAL) -> Listener | None:
        """A not yet started listener calling ``on_change`` when anyone writes; None where changes can only be polled.

        It connects to ``url`` (``revstore_listen_url``) or the store's, and
        proves it hears by probes sent through this store every ``check_interval``.
        """
        return self.backend.listener(url or self.url, self.channel, on_change, name, probe=self.notify,
                                     check_interval=check_interval, fallback_interval=fallback_interval)

    def add(
        self,
        targets: Iterable[Target | str],
        *,
        terminate: bool = False,
        signal: str | int | None = None,
        reason: str | None = None,
        revoked_by: str | None = None,
        expires: float | timedelta | None = DEFAULT,
        if_needed: bool = False,
        decided_ago: float | None = None,
        heard_at: datetime | None = None,
    ) -> WriteResult:
        """Revoke ``targets`` (task ids or :class:`Target`) in one transaction.

        Idempotent: revoking again never weakens a row.  ``terminate`` stays
        on once set, the later expiry wins, and a row that would not change
        is not rewritten.  With ``if_needed`` a read first drops the targets
        already covered, so when N workers write the same broadcast the
        first one writes and the others only read (no clock lock taken).

        ``decided_ago``: the revoke was heard this many seconds ago (a
        worker's queued write-through).  An un-revoke made since then wins:
        the write does not bring back a target restored after it was heard,
        so a slow worker's copy of an old broadcast cannot undo a restore.
        ``heard_at`` says the same as a database time (a worker's spool,
        replayed long after, or a write that waited for a reconnect: an age
        would count the wait for the connection as well).
        """
        items = unique_targets(targets)
        sig = normalize_signal(signal) if signal is not None else ("SIGTERM" if terminate else None)
        if reason is not None:
            reason = str(reason)[:MAX_REASON_LENGTH].replace("\x00", "")
        by = _actor(revoked_by)
        if not items:
            return WriteResult(0, 0)
        # validate expires before touching the database
        self._expiry(datetime(2000, 1, 1), expires)

        def write(conn: Connection) -> WriteResult:
            todo = items
            if if_needed:  # in the same transaction, before the clock lock: one commit, not two
                covered = self._covered_in(conn, items, bool(terminate), expires)
                todo = [t for t in items if t not in covered]
                if not todo:
                    return WriteResult(0, 0)
            version, now = self._bump_at(conn)
            expires_at = self._expiry(now, expires)
            shared = {
                "terminate": bool(terminate),
                "signal": sig,
                "reason": reason,
                "revoked_by": by,
                "revoked_at": now,
                "expires_at": expires_at,
                "version": version,
                "active": True,
            }
            heard = None if decided_ago is None else now - timedelta(seconds=max(0.0, decided_ago))
            if heard_at is not None:
                heard = self.backend.column_time(heard_at.astimezone(timezone.utc))
            changed = 0
            for chunk in self._key_chunks(todo, self.backend.upsert_chunk):
                # a notification repeated in one transaction is delivered once
                changed += self._upsert(conn, chunk, shared, expires_at, heard, notify=(self.channel, version))
            _audit.record(conn, self.tables, "revoke", todo, by, reason, now)
            return WriteResult(changed, version, len(todo) - changed)

        return self._run(write, write=True)

    def _covered_in(self, conn: Connection, items: list[Target], terminate: bool, expires: Any) -> set[Target]:
        """The targets whose active row is already at least as strong as this write."""
        table = self.tables.revocations
        wanted = self._expiry(self._db_now(conn), expires)
        found: set[Target] = set()
        for chunk in self._key_chunks(items):
            stmt = select(table.c.kind, table.c.header, table.c.value).where(self._key_in(chunk), table.c.active)
            if terminate:
                stmt = stmt.where(table.c.terminate)
            if wanted is None:
                stmt = stmt.where(table.c.expires_at.is_(None))
            else:
                stmt = stmt.where(or_(table.c.expires_at.is_(None), table.c.expires_at >= wanted - EXTEND_SLACK))
            stored = {_keys.stored(t.kind, t.header, t.value)[0]: t for t in chunk}
            found.update(stored[tuple(key)] for key in conn.execute(stmt))  # type: ignore[index]
        return found

    def _key_chunks(self, items: list[Target], size: int | None = None) -> Iterator[list[Target]]:
        """``items`` in pieces of the size one statement takes on this backend (a lookup's, by default)."""
        size = size or self.backend.key_chunk
        for start in range(0, len(items), size):
            yield items[start : start + size]

    def _key_in(self, items: list[Target]) -> Any:
        """A WHERE condition: the row's key is one of ``items``."""
        return self.backend.key_in(self.tables.revocations, [_keys.stored(t.kind, t.header, t.value)[0] for t in items])

    def put_rows(self, rows: Sequence[Revocation], *, imported_by: str | None = None) -> WriteResult:
        """Write rows exactly as given (times, reason, revoker), for ``revstore import``.

        A row already active in the table is left alone: an import never
        weakens or shortens a live revocation.  Tombstones in the table are
        replaced by active imported rows.  Versions are new (this database's).
        The rows keep their own ``revoked_by``; the audit names ``imported_by``
        (default: user@host), who ran the import.
        """
        actor = _actor(imported_by)
        items = list(rows)
        for row in items:
            as_target(row.target)
        if not items:
            return WriteResult(0, 0)

        def when(value: datetime | None) -> datetime | None:
            if value is None:
                return None
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return self.backend.column_time(value)

        def merge(old: Any, new: Any) -> tuple[dict[str, Any], Any]:
            # only a tombstone is replaced, and only by an active row
            names = [c.name for c in self.tables.revocations.c if c.name not in ("kind", "header", "value")]
            return {name: getattr(new, name) for name in names}, and_(~old.active, new.active)

        def write(conn: Connection) -> WriteResult:
            version, now = self._bump_at(conn)
            changed = 0
            for start in range(0, len(items), WRITE_CHUNK):
                values = [
                    {
                        **_stored_row(r.target),
                        "terminate": r.terminate and r.active,
                        "signal": normalize_signal(r.signal) if r.signal and r.active else None,
                        "reason": r.reason,
                        "revoked_by": r.revoked_by,
                        "revoked_at": when(r.revoked_at) or now,
                        "expires_at": when(r.expires_at),
                        "version": version,
                        "active": r.active,
                    }
                    for r in items[start : start + WRITE_CHUNK]
                ]
                changed += self.backend.upsert_rows(conn, self.tables.revocations, values, merge)
            _audit.record(conn, self.tables, "import", [r.target for r in items], actor, None, now)
            if changed:
                self._notify(conn, version)
            return WriteResult(changed, version if changed else 0)

        return self._run(write, write=True)

    def _upsert(self, conn: Connection, items: list[Target], shared: dict[str, Any], expires_at: datetime | None,
                heard: datetime | None = None, notify: tuple[str, int] | None = None) -> int:
        """Insert or strengthen ``items``, every row with the ``shared`` column values.

        A tombstone is revived unless it was written after ``heard``.
        """

        def merge(old: Any, new: Any) -> tuple[dict[str, Any], Any]:
            stronger = and_(new.terminate, ~old.terminate)
            # A re-revoke extends the expiry only when it gains more than
            # EXTEND_SLACK: N workers writing one broadcast a few ms apart must
            # not each rewrite the row just to move its expiry by milliseconds.
            if expires_at is None:
                longer = old.expires_at.is_not(None)
            else:
                longer = and_(old.expires_at.is_not(None),
                              old.expires_at < literal(expires_at - EXTEND_SLACK, old.expires_at.type))
            set_ = {
                "terminate": or_(and_(old.active, old.terminate), new.terminate),
                "signal": case((new.terminate, new.signal), (old.active, old.signal), else_=None),
                "reason": case((~old.active, new.reason), else_=func.coalesce(new.reason, old.reason)),
                "revoked_by": case((~old.active, new.revoked_by), else_=old.revoked_by),
                "revoked_at": case((~old.active, new.revoked_at), else_=old.revoked_at),
                "expires_at": case((~old.active, new.expires_at), (longer, new.expires_at), else_=old.expires_at),
                "version": new.version,
                "active": True,
            }
            revive = ~old.active if heard is None else and_(
                ~old.active, old.revoked_at < literal(heard, old.revoked_at.type))
            return set_, or_(revive, and_(old.active, or_(stronger, longer)))

        return self.backend.upsert(conn, self.tables.revocations, _stored_rows(items), shared, merge, notify)

    def remove(self, targets: Iterable[Target | str], *, revoked_by: str | None = None) -> WriteResult:
        """Un-revoke: the targets become runnable again on every worker.

        Each target gets a tombstone dated now (database time), whether or
        not it had a row: a revoke heard before this restore but committed
        after it (a worker's queued or spooled write-through, see
        ``add(decided_ago=...)``) then finds the tombstone and loses.  The
        tombstone stays until ``tombstone_ttl`` so running workers learn of
        the change on their next sync.  ``changed`` counts the targets that
        were revoked.
        """
        by = _actor(revoked_by)
        table = self.tables.revocations

        def write(conn: Connection, items: list[Target], version: int, now: datetime) -> WriteResult:
            shared = {
                "terminate": False, "signal": None, "reason": None, "revoked_by": by, "revoked_at": now,
                "expires_at": now + timedelta(seconds=self.tombstone_ttl), "version": version, "active": False,
            }
            was_active = 0

            def merge(old: Any, new: Any) -> tuple[dict[str, Any], Any]:
                return {name: getattr(new, name) for name in shared if name != "reason"}, true()

            for chunk in self._key_chunks(items):
                was_active += int(conn.execute(
                    select(func.count()).select_from(table).where(self._key_in(chunk), table.c.active)
                ).scalar_one())
                self.backend.upsert(conn, table, _stored_rows(chunk), shared, merge)
            _audit.record(conn, self.tables, "restore", items, by, None, now)
            self._notify(conn, version)
            return WriteResult(was_active, version)

        return self._versioned_write(targets, write)

    def extend(self, targets: Iterable[Target | str], expires: float, *, extended_by: str | None = None) -> WriteResult:
        """Keep active revocations at least ``expires`` seconds from now (database time).

        For a worker holding a task whose ETA is later than its revocation's
        expiry.  Unlike :meth:`add` it never revives a restored target, and it
        leaves rows that already last long enough (within EXTEND_SLACK) alone.
        The row's ``revoked_by`` stays; the audit names ``extended_by``
        (default: user@host), and only when a row changed: workers extend
        on their own, often with nothing to do.
        """
        actor = _actor(extended_by)
        self._expiry(datetime(2000, 1, 1), expires)  # validate before touching the database
        table = self.tables.revocations

        def shorter(now: datetime) -> Any:
            until = self._expiry(now, expires)
            return and_(table.c.expires_at.is_not(None), table.c.expires_at < until - EXTEND_SLACK)

        return self._update_active(
            targets, lambda version, now: {"expires_at": self._expiry(now, expires), "version": version}, shorter,
            audit=("extend", actor))

    def _update_active(self, targets: Iterable[Target | str], values: Any, where: Any = None, *,
                       audit: tuple[str, str]) -> WriteResult:
        """Change active rows of ``targets`` in one versioned transaction.

        ``values(version, now)`` gives the new column values; ``where(now)``
        narrows the rows further; ``audit`` (action, actor) is recorded when
        a row changed.
        """
        table = self.tables.revocations

        def write(conn: Connection, items: list[Target], version: int, now: datetime) -> WriteResult:
            changed = 0
            for chunk in self._key_chunks(items):
                stmt = update(table).where(self._key_in(chunk), table.c.active)
                if where is not None:
                    stmt = stmt.where(where(now))
                result = conn.execute(stmt.values(**values(version, now)))
                changed += max(result.rowcount or 0, 0)
            if changed:
                _audit.record(conn, self.tables, audit[0], items, audit[1], None, now)
                self._notify(conn, version)
            return WriteResult(changed, version if changed else 0)

        return self._versioned_write(targets, write)

    def _versioned_write(self, targets: Iterable[Target | str],
                         body: Callable[[Connection, list[Target], int, datetime], WriteResult]) -> WriteResult:
        """Run ``body(conn, targets, version, now)`` in one transaction holding a new clock version.

        Nothing to write takes no clock lock: an empty call must not
        serialise behind every writer.
        """
        items = unique_targets(targets)
        if not items:
            return WriteResult(0, 0)
        return self._run(lambda conn: body(conn, items, *self._bump_at(conn)), write=True)

    def purge_expired(self, batch: int = _config.DEFAULT_CLEANUP_BATCH, max_batches: int | None = None) -> int:
        """Delete expired rows in short transactions of at most ``batch`` rows.

        Safe to run from many workers at once: where the database can, each
        batch skips rows another cleaner holds (PostgreSQL's ``SKIP LOCKED``).  Deleting an expired
        un-revoke records its version so a reader that never saw it reloads.
        """
        clock = self.tables.clock
        total = 0
        batches = 0
        for tombstones in (False, True):
            while max_batches is None or batches < max_batches:
                def delete(conn: Connection) -> int:
                    if tombstones:
                        # lock order clock -> rows, as writers do: no deadlock
                        self._bump(conn)
                    found = self._delete_expired(conn, tombstones, batch)
                    if not found:
                        return 0
                    if tombstones:
                        top = max(found)
                        conn.execute(
                            update(clock)
                            .where(clock.c.id == 1, clock.c.purged_version < top)
                            .values(purged_version=top)
                        )
                    return len(found)

                deleted = self._run(delete, write=True)
                batches += 1
                total += deleted
                if deleted < batch:
                    break
        return total

    def purge_audit(self, batch: int = _config.DEFAULT_CLEANUP_BATCH, max_batches: int | None = None) -> int:
        """Delete audit rows older than ``audit_ttl`` (database time), ``batch`` rows per transaction."""
        total, batches = 0, 0
        while max_batches is None or batches < max_batches:
            deleted = self._run(lambda conn: _audit.delete_older(
                conn, self.tables, self.backend.now_plus(-self.audit_ttl), batch), write=True)
            total, batches = total + deleted, batches + 1
            if deleted < batch:
                break
        return total

    def audit_history(self, *, key: Target | str | None = None, actor: str | None = None,
                      since: float | None = None, limit: int | None = None,
                      newest_first: bool = False) -> list[_audit.AuditEntry]:
        """Audit rows, oldest first: those naming ``key`` among their first keys, by ``actor``,
        of the last ``since`` seconds (database time).  ``newest_first`` with ``limit``: the latest ones."""
        target = as_target(key) if key is not None else None
        if since is not None and not since > 0:
            raise InvalidInput(f"revstore: since must be a positive number of seconds, not {since!r}")
        stmt = _audit.query(self.tables, key=target, actor=actor,
                            since=None if since is None else self.backend.now_plus(-since), limit=limit,
                            newest_first=newest_first)
        return self._run(lambda conn: [_audit.entry(row) for row in conn.execute(stmt)])

    def _delete_expired(self, conn: Connection, tombstones: bool, batch: int) -> list[int]:
        """Delete up to ``batch`` expired rows (or tombstones); their versions."""
        return self.backend.delete_expired(
            conn,
            self.tables.revocations,
            lambda victim: and_(victim.c.expires_at < self._now(), victim.c.active == (not tombstones)),
            batch,
        )

    # ---------------------------------------------------------------- reads

    def _columns(self) -> list[Any]:
        t = self.tables.revocations
        return [
            t.c.kind, t.c.header, t.c.value, t.c.terminate, t.c.signal, t.c.reason,
            t.c.revoked_by, t.c.revoked_at, t.c.expires_at, t.c.version, t.c.active, t.c.header_full, t.c.value_full,
        ]

    def _row(self, row: Sequence[Any], now: datetime) -> Revocation:
        kind, header, value, terminate, sig, reason, by, at, exp, version, active, header_full, value_full = row
        if isinstance(now, datetime) and exp is not None and (exp.tzinfo is None) != (now.tzinfo is None):
            exp = exp.replace(tzinfo=now.tzinfo)
        return Revocation(
            _target(kind, header, value, header_full, value_full), bool(terminate), sig, reason, by, at, exp,
            int(version), bool(active), self._remaining(exp, now),
        )

    def get(self, target: Target | str) -> Revocation | None:
        """The row for one target, tombstones and expired rows included."""
        t = as_target(target)
        return self.get_many([t]).get(t)

    def get_many(self, targets: Iterable[Target | str]) -> dict[Target, Revocation]:
        """The rows of many targets (tombstones and expired rows included); absent ones are left out."""
        items = unique_targets(targets)

        def read(conn: Connection) -> dict[Target, Revocation]:
            now = self._db_now(conn)
            found: dict[Target, Revocation] = {}
            for chunk in self._key_chunks(items):
                for row in conn.execute(select(*self._columns()).where(self._key_in(chunk))):
                    revocation = self._row(row, now)
                    found[revocation.target] = revocation
            return found

        return self._run(read) if items else {}

    def is_revoked(self, target: Target | str) -> bool:
        row = self.get(target)
        return bool(row and row.active and (row.remaining is None or row.remaining > 0))

    def iter_active(self, kind: Kind | None = None, *, limit: int | None = None) -> list[Revocation]:
        """Every unexpired revocation (optionally of one kind), oldest first."""
        table = self.tables.revocations

        def read(conn: Connection) -> list[Revocation]:
            now = self._db_now(conn)
            stmt = select(*self._columns()).where(
                table.c.active, or_(table.c.expires_at.is_(None), table.c.expires_at > self._now())
            )
            if kind is not None:
                stmt = stmt.where(table.c.kind == kind)
            stmt = stmt.order_by(table.c.version, table.c.value)
            if limit is not None:
                stmt = stmt.limit(limit)
            return [self._row(r, now) for r in conn.execute(stmt)]

        return self._run(read)

    def load_active(self, chunk: int = 20_000) -> tuple[Snapshot, int]:
        """Fast path for worker start-up: every unexpired revocation, and a marker.

        A million rows must load in about a second and cost no more memory
        than Celery's own set.  Task ids (nearly all rows) come as two
        columns, an id list and a float array, as compactly as the backend
        can send them (packed by the server on PostgreSQL, elsewhere in
        ``chunk``-row pieces).  Ids stored by digest (rare: too long for the
        index, see revstore.keys) are then looked up by key for their text.
        The remaining lifetime is computed by the database.
        The marker is the clock read *before* the rows: every version at or
        below it had committed, so the rows include all of them; anything
        newer that the load also saw comes again from ``changes_since``,
        which is harmless because applying a row twice changes nothing.
        """
        table, clock = self.tables.revocations, self.tables.clock
        remaining, never = self.backend.seconds_left(table.c.expires_at), self.backend.infinity()
        live = and_(table.c.active, or_(table.c.expires_at.is_(None), table.c.expires_at > self._now()))
        tasks = select(table.c.value, func.coalesce(remaining, never)).where(table.c.kind == "task", live)
        # ranges of the primary key (kind first): no second pass over the million task rows
        others = select(table.c.kind, table.c.header, table.c.value, table.c.header_full, table.c.value_full,
                        remaining).where(table.c.kind.in_([kind for kind in KINDS if kind != "task"]), live)

        def read(conn: Connection) -> tuple[Snapshot, int]:
            marker = int(conn.execute(select(clock.c.version).where(clock.c.id == 1)).scalar_one())
            snapshot = Snapshot([], array("d"), [])
            for ids, left in self.backend.task_ids(conn, tasks, chunk):
                if snapshot.task_ids:
                    snapshot.task_ids.extend(ids)
                    snapshot.task_remaining.extend(left)
                else:
                    snapshot.task_ids, snapshot.task_remaining = ids, left
            self._undigest(conn, snapshot.task_ids)
            for k, h, v, hf, vf, r in conn.execute(others):
                target = _target(k, h, v, hf, vf)
                snapshot.others.append((k, target.header, target.value, None if r is None else float(r)))
            return snapshot, marker

        with gc_paused():
            return self._run(read)

    def _undigest(self, conn: Connection, task_ids: list[str]) -> None:
        """Replace, in place, the digests of ids too long for the key column by the ids themselves.

        Such ids are rare, so the load reads every task row's key column
        alone and then looks the few digests up by key, instead of a second
        pass over the whole table for their full texts (a second scan of a
        million rows: a second on MariaDB).
        """
        if not any(map(_is_digest, task_ids)):
            return
        at = {value: i for i, value in enumerate(task_ids) if _is_digest(value)}
        table, keys = self.tables.revocations, [("task", "", value) for value in at]
        for start in range(0, len(keys), self.backend.key_chunk):
            stmt = select(table.c.value, table.c.value_full).where(
                self.backend.key_in(table, keys[start:start + self.backend.key_chunk]))
            for value, value_full in conn.execute(stmt):
                task_ids[at[value]] = _target("task", "", value, None, value_full).value

    def _identity_columns(self, conn: Connection) -> list[Any]:
        """Scalar SQL for what the database says it is: the installation id, then the server's own."""
        if self._server_identity is None:
            self._server_identity = self.backend.server_identity(conn)
        info = self.tables.schema_info
        return [select(info.c.installation_id).where(info.c.id == 1).scalar_subquery(),
                *self._server_identity.values()]

    def _identity(self, values: Sequence[Any]) -> DbIdentity:
        """What :meth:`_identity_columns` read, as a DbIdentity."""
        installation, *server = values
        return DbIdentity(installation, dict(zip(self._server_identity or {}, server)))

    def identity(self) -> DbIdentity:
        """Which database this is: what a marker and a local snapshot belong to (see revstore.identity)."""
        def read(conn: Connection) -> DbIdentity:
            columns = self._identity_columns(conn)
            return self._identity(conn.execute(select(*columns)).one())

        return self._run(read)

    def record_rewind(self, note: str) -> None:
        """Note in the clock row that a worker found the database changed under it (``revstore stats``)."""
        clock = self.tables.clock

        def write(conn: Connection) -> None:
            conn.execute(update(clock).where(clock.c.id == 1).values(
                rewound_at=self._db_now(conn), rewound_note=note[:REWOUND_NOTE_LENGTH]))

        self._run(write, write=True)

    def changes_since(self, marker: int, witness: Target | None = None) -> Changes:
        """Rows written (revoked or un-revoked) after ``marker``, in version order.

        One statement, since every worker runs it at every poll (through a
        pooler, each statement is a round trip to the server): the clock
        row, outer-joined to the rows newer than ``marker``, so an idle
        poll still returns the clock's one row.  The statement's one
        snapshot sees a cleanup's deletions together with the
        ``purged_version`` it recorded (see :meth:`purge_expired`).  The
        same row carries the clock's version and what the database says it
        is, so a reader learns in the same round trip whether its marker
        still means anything here (see revstore.identity).

        ``witness``: a row the reader pulled at its marker's version.  Its
        version now comes back too (one primary-key lookup): a table put
        back from a copy loses it, or gives it an older version, even once
        later writes have taken the clock past the reader's marker again.
        """
        table, clock = self.tables.revocations, self.tables.clock
        seen = table.alias("witness")
        if witness is None:
            witness_version: Any = null()
        else:
            k, h, v = _keys.stored(witness.kind, witness.header, witness.value)[0]
            witness_version = (select(seen.c.version).where(seen.c.kind == k, seen.c.header == h, seen.c.value == v)
                               .scalar_subquery())

        def read(conn: Connection) -> Changes:
            identity = self._identity_columns(conn)
            stmt = (
                select(clock.c.purged_version, clock.c.version, self._now(), witness_version, *identity,
                       *self._columns())
                .select_from(clock.outerjoin(table, table.c.version > marker))
                .where(clock.c.id == 1)
                .order_by(table.c.version)
            )
            found = conn.execute(stmt).all()
            first, skip = found[0], 4 + len(identity)
            purged, now = int(first[0]), self.backend.as_datetime(first[2])
            rows = [self._row(r[skip:], now) for r in found if r[skip] is not None]
            new_marker = max([marker] + [r.version for r in rows])
            return Changes(rows, new_marker, purged > marker, now, int(first[1]), self._identity(first[4:skip]),
                           purged, None if first[3] is None else int(first[3]))

        return self._run(read)

    def iter_rows(self, page: int = 10_000) -> Iterator[Revocation]:
        """Every row, tombstones and expired ones too, in key order.

        One short read per page (keyset pagination), so exporting millions of
        rows holds neither a long transaction nor the whole table in memory.
        """
        table = self.tables.revocations
        key = tuple_(table.c.kind, table.c.header, table.c.value)
        after: tuple[str, str, str] | None = None
        while True:
            def read(conn: Connection) -> list[Sequence[Any]]:
                stmt = select(*self._columns()).order_by(table.c.kind, table.c.header, table.c.value).limit(page)
                if after is not None:
                    stmt = stmt.where(key > tuple_(*(literal(v) for v in after)))
                now = self._db_now(conn)
                return [(r[:3], self._row(r, now)) for r in conn.execute(stmt)]

            rows = self._run(read)
            yield from (revocation for _, revocation in rows)
            if len(rows) < page:
                return
            after = tuple(rows[-1][0])  # the stored key, a digest for a long one

    def current_version(self) -> int:
        clock = self.tables.clock
        return int(self._run(lambda conn: conn.execute(select(clock.c.version).where(clock.c.id == 1)).scalar_one()))

    def next_expiry(self) -> float | None:
        """Seconds until the soonest active revocation expires (None: none expires), for /metrics.

        One descent of the ``expires_at`` index (a min() the planner answers
        with a one-row index scan), so a scrape costs the same at a million rows.
        """
        table = self.tables.revocations

        def read(conn: Connection) -> float | None:
            now = self._db_now(conn)
            soonest = conn.execute(select(func.min(table.c.expires_at))
                                   .where(table.c.active, table.c.expires_at > self._now())).scalar_one()
            if soonest is None:
                return None
            if isinstance(soonest, str):  # SQLite hands timestamps back as text
                soonest = datetime.fromisoformat(soonest)
            if (soonest.tzinfo is None) != (now.tzinfo is None):
                soonest = soonest.replace(tzinfo=now.tzinfo)
            return max(0.0, (soonest - now).total_seconds())

        return self._run(read)

    def stats(self) -> dict[str, Any]:
        """Counts for operators: active by kind, expired awaiting cleanup, tombstones."""
        table, clock = self.tables.revocations, self.tables.clock

        def read(conn: Connection) -> dict[str, Any]:
            expired = and_(table.c.expires_at.is_not(None), table.c.expires_at <= self._now())
            rows = conn.execute(
                select(
                    table.c.kind,
                    table.c.active,
                    func.sum(case((expired, 1), else_=0)),
                    func.count(),
                    func.sum(case((table.c.terminate, 1), else_=0)),
                ).group_by(table.c.kind, table.c.active)
            ).all()
            out: dict[str, Any] = {
                "database": _config.mask_url(self.url),
                "active": {k: 0 for k in KINDS},
                "terminate": 0,
                "expired_awaiting_cleanup": 0,
                "tombstones": 0,
            }
            for kind, active, n_expired, n, n_term in rows:
                n_expired = int(n_expired or 0)
                if active:
                    out["active"][kind] = int(n) - n_expired
                    out["terminate"] += int(n_term or 0)
                    out["expired_awaiting_cleanup"] += n_expired
                else:
                    out["tombstones"] += int(n)
            version, purged, rewound_at, rewound_note = conn.execute(
                select(clock.c.version, clock.c.purged_version, clock.c.rewound_at, clock.c.rewound_note)).one()
            out["version"] = int(version)
            out["purged_version"] = int(purged)
            out["installation"] = self._identity(conn.execute(select(*self._identity_columns(conn))).one()).as_record()
            # the last time a worker found the database changed under it, and what it saw
            out["rewound_at"] = rewound_at.isoformat() if rewound_at is not None else None
            out["rewound"] = rewound_note
            out.update(self.backend.extra_stats(conn, self.channel))
            return out

        return self._run(read)

    def db_now(self) -> datetime:
        """The database server's current time, timezone-aware (a worker's clock anchor)."""
        value = self._run(self._db_now)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def search(
        self,
        text_: str | None = None,
        *,
        kind: Kind | None = None,
        active: bool | None = True,
        terminate: bool | None = None,
        expiring_within: float | None = None,
        after: tuple[str, str, str] | None = None,
        limit: int = 50,
    ) -> list[Revocation]:
        """One page of rows for a browsing operator, in key order.

        ``text_`` matches a task or root id by prefix (an exact id included),
        or a substring of the reason or the revoker.  ``active`` True keeps
        unexpired revocations, False keeps un-revoke tombstones, None keeps
        every row.  Pages follow the primary key (``after`` is the last row's
        :meth:`Revocation.page_key`): a page deep in a million rows costs what
        the first does, where an ``OFFSET`` would read every row before it.
        """
        table = self.tables.revocations
        key = tuple_(table.c.kind, table.c.header, table.c.value)
        stmt = select(*self._columns())
        if kind is not None:
            stmt = stmt.where(table.c.kind == kind)
        if active is True:
            stmt = stmt.where(table.c.active, or_(table.c.expires_at.is_(None), table.c.expires_at > self._now()))
        elif active is False:
            stmt = stmt.where(~table.c.active)
        if terminate is not None:
            stmt = stmt.where(table.c.terminate == terminate)
        if expiring_within is not None:
            stmt = stmt.where(table.c.expires_at > self._now(), table.c.expires_at <= self.backend.now_plus(expiring_within))
        if after is not None:
            stmt = stmt.where(key > tuple_(*(literal(v) for v in after)))
        in_key_order = [table.c.kind, table.c.header, table.c.value]
        if text_:
            # Two index-friendly reads instead of one OR: ids by a primary-key
            # range; reasons and revokers by a scan that sorts only its
            # matches ("kind || ''" keeps the planner from walking the whole
            # key index in order, testing every row, to find a few).
            ids = stmt.where(table.c.kind.in_(("task", "root")), table.c.header == "",
                             table.c.value >= text_, table.c.value < text_ + "\U0010ffff")
            words = stmt.where(or_(table.c.reason.contains(text_, autoescape=True),
                                   table.c.revoked_by.contains(text_, autoescape=True),
                                   # ids stored by digest, by the start of their text
                                   table.c.value_full.startswith(_keys.encode_full(text_)[:-1], autoescape=True)))
            reads = [ids.order_by(*in_key_order).limit(limit),
                     words.order_by(table.c.kind.concat(""), table.c.header, table.c.value).limit(limit)]
        else:
            reads = [stmt.order_by(*in_key_order).limit(limit)]

        def read(conn: Connection) -> list[Revocation]:
            db_now = self._db_now(conn)
            found = {r.target: r for q in reads for r in (self._row(row, db_now) for row in conn.execute(q))}
            return sorted(found.values(), key=Revocation.page_key)[:limit]

        return self._run(read)

    def overview(self, expiring_within: float = 3600.0, days: int = 14) -> dict[str, Any]:
        """What an operator's front page shows: :meth:`stats`, what expires soon, and writes per day."""
        table = self.tables.revocations
        out = self.stats()

        def read(conn: Connection) -> None:
            now = self._now()
            out["expiring_soon"] = int(conn.execute(
                select(func.count()).where(table.c.active, table.c.expires_at > now,
                                           table.c.expires_at <= self.backend.now_plus(expiring_within))
            ).scalar_one())
            day = func.date(table.c.revoked_at)
            since = self.backend.now_plus(-days * 86400.0)
            out["per_day"] = [
                (str(d), int(n)) for d, n in conn.execute(
                    select(day, func.count()).where(table.c.revoked_at >= since).group_by(day).order_by(day))
            ]
            out["expiring_within"] = expiring_within

        self._run(read)
        return out

    def ping(self) -> None:
        """Raise DatabaseUnavailable/SchemaError unless the tables can be read."""
        clock = self.tables.clock
        self._run(lambda conn: conn.execute(select(clock.c.version)).first())


def _actor(by: str | None) -> str:
    """Who a write is recorded under: ``by`` if given (validated), else this process's user@host."""
    return validate_label(by, "revoked_by") if by is not None else default_revoker()


#: Whether a task's key column holds a digest (see revstore.keys): a C-level test per id.
_is_digest = methodcaller("startswith", _keys.DIGEST_PREFIX)


def _target(kind: str, header: str, value: str, header_full: str | None, value_full: str | None) -> Target:
    """The target a row stands for: its full texts where the key columns hold digests."""
    return Target(
        kind,  # type: ignore[arg-type]
        value if value_full is None else _keys.decode_full(value_full),
        header if header_full is None else _keys.decode_full(header_full),
    )


def _stored_row(target: Target) -> dict[str, str | None]:
    """The key columns ``target`` is stored under (see revstore.keys)."""
    (kind, header, value), header_full, value_full = _keys.stored(target.kind, target.header, target.value)
    return {"kind": kind, "header": header, "value": value, "header_full": header_full, "value_full": value_full}


def _stored_rows(items: list[Target]) -> list[dict[str, str | None]]:
    return [_stored_row(t) for t in items]


def short_error(exc: BaseException) -> str:
    """First line of a driver error, with any URL password masked."""
    orig = getattr(exc, "orig", None) or exc
    text_ = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return _config.mask_url(text_) if "://" in text_ else text_


def _is_missing_column(exc: DBAPIError) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    return ("no such column" in msg or "has no column named" in msg or "unknown column" in msg
            or ("column" in msg and "does not exist" in msg))


def _is_missing_table(exc: DBAPIError) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    return "no such table" in msg or ("relation" in msg and "does not exist" in msg) or "doesn't exist" in msg
