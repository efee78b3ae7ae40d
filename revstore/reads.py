"""The worker's read path: the start-up load, the poll, and what the database says it is.

Every worker runs these, the poll every few seconds, so each is one short
statement wherever it can be (through a pooler, each statement is a round
trip to the server).  Operators' reads live in :mod:`revstore.queries`.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, null, or_, select
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select

from . import config as _config
from . import keys as _keys
from .backends import Listener
from .dbclock import epoch
from .errors import SchemaError
from .executor import Door, Executor, is_digest, target_of
from .identity import DbIdentity
from .records import Changes, Snapshot, Target, gc_paused
from .schema import KINDS
from .window import SchemaState

#: An upper bound no write can reach past a reader's marker (versions count
#: transactions).  Bounded on both sides, the poll's range is one a planner
#: without statistics (a table just bulk-loaded, before autovacuum's ANALYZE)
#: takes as narrow and reads through the version index; open-ended, it
#: estimated a third of the table and scanned it all: 60-90 ms per idle poll
#: at 500,000 rows, on every worker, until the table was analyzed.
_AHEAD = 2**62


#: the shortest a digest stored in a key column is (see revstore.keys.digest)
_DIGEST_LENGTH = len(_keys.digest(""))


class _LongWay(Exception):
    """The start-up read's first statement failed: read the long way, which says why."""


@dataclass
class StartupRead:
    """What :meth:`WorkerReads.startup_read` read: all a worker's start-up load needs."""

    #: the schema's window row, for the caller's check
    schema: SchemaState
    identity: DbIdentity
    rows: Snapshot
    #: the clock's version read before the rows (see :meth:`WorkerReads.load_active`)
    marker: int
    #: the database's time (epoch seconds) once the rows were read
    db_now: float


class WorkerReads(Door):
    """What a worker reads: everything active at start, then only what changed."""

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor)
        #: :meth:`changes_since`'s statement, with a witness and without, and the identity columns it was built for
        self._changes: dict[bool, tuple[list[Any], Select[Any]]] = {}

    def load_active(self, chunk: int = 20_000) -> tuple[Snapshot, int]:
        """Fast path for worker start-up: every unexpired revocation, and a marker.

        A million rows must load in about a second and cost no more memory
        than Celery's own set.  Task ids (nearly all rows) come as two
        columns, an id list and a float array, as compactly as the backend
        can send them (packed by the server where it can, elsewhere in
        ``chunk``-row pieces).  Ids stored by digest (rare: too long for the
        index, see revstore.keys) are then looked up by key for their text.
        The remaining lifetime is computed by the database.
        The marker is the clock read *before* the rows: every version at or
        below it had committed, so the rows include all of them; anything
        newer that the load also saw comes again from ``changes_since``,
        which is harmless because applying a row twice changes nothing.
        """
        clock = self.executor.tables.clock

        def read(conn: Connection) -> tuple[Snapshot, int]:
            marker = int(conn.execute(select(clock.c.version).where(clock.c.id == 1)).scalar_one())
            return self._read_active(conn, chunk), marker

        with gc_paused():
            return self.executor.run(read)

    def startup_read(self, chunk: int = 20_000) -> StartupRead | None:
        """All a worker reads at start, on one connection: the schema's row, identity, marker, time, rows.

        What the schema check (:func:`revstore.migrate.check_schema`),
        :meth:`identity`, :meth:`load_active` and :meth:`db_now` read,
        in a few round trips instead of some thirty: one statement for the
        schema's row, what the database says it is, the marker and the
        time, then the rows as :meth:`load_active` reads them.  Each round
        trip is cheap on an idle machine, but a worker starts while its pool
        forks and the machine is busy: there each cost tens of
        milliseconds.  The caller checks the schema's row before using
        anything else.  None where that statement fails (an old schema, a
        role refused the server's identity functions): the caller then
        reads the long way, whose errors say what is wrong.
        """
        ex = self.executor
        info, clock = ex.tables.schema_info, ex.tables.clock
        identity, proven = ex.unprobed_identity_columns()
        window = [select(column).where(info.c.id == 1).scalar_subquery()
                  for column in (info.c.revision, info.c.schema_release, info.c.oldest_release)]
        head = select(select(clock.c.version).where(clock.c.id == 1).scalar_subquery(), ex.now(), *window, *identity)

        def read(conn: Connection) -> StartupRead | None:
            try:
                first = conn.execute(head).one()
            except DBAPIError as exc:  # out of the transaction, whatever the driver calls it
                raise _LongWay from exc
            arrived = time.monotonic()
            if first[2] is None:  # no window row: the long way reads the version tables
                return None
            proven()
            now = epoch(ex.backend.aware(ex.backend.as_datetime(first[1])))
            snapshot = self._read_active(conn, chunk)
            # the database's time once the rows are read, as db_now() read it after load_active()
            return StartupRead(SchemaState(*first[2:5]), ex.identity(first[5:]), snapshot, int(first[0]),
                               now + (time.monotonic() - arrived))

        try:
            with gc_paused():
                return ex.run(read)
        except (_LongWay, SchemaError, DBAPIError):  # the long way says what is wrong (DatabaseUnavailable is raised)
            return None

    def _read_active(self, conn: Connection, chunk: int) -> Snapshot:
        """Every unexpired revocation, in ``conn``'s transaction (see :meth:`load_active`)."""
        ex = self.executor
        table, backend = ex.tables.revocations, ex.backend
        remaining, never = backend.seconds_left(table.c.expires_at), backend.infinity()
        live = and_(table.c.active, or_(table.c.expires_at.is_(None), table.c.expires_at > ex.now()))
        tasks = select(table.c.value, func.coalesce(remaining, never)).where(table.c.kind == "task", live)
        # ranges of the primary key (kind first): no second pass over the million task rows
        others = select(table.c.kind, table.c.header, table.c.value, table.c.header_full, table.c.value_full,
                        remaining).where(table.c.kind.in_([kind for kind in KINDS if kind != "task"]), live)
        snapshot = Snapshot([], array("d"), [])
        for ids, left in backend.task_ids(conn, tasks, chunk):
            if snapshot.task_ids:
                snapshot.task_ids.extend(ids)
                snapshot.task_remaining.extend(left)
            else:
                snapshot.task_ids, snapshot.task_remaining = ids, left
        self._undigest(conn, snapshot.task_ids)
        for k, h, v, hf, vf, r in conn.execute(others):
            target = target_of(k, h, v, hf, vf)
            snapshot.others.append((k, target.header, target.value, None if r is None else float(r)))
        return snapshot

    def _undigest(self, conn: Connection, task_ids: list[str]) -> None:
        """Replace, in place, the digests of ids too long for the key column by the ids themselves.

        Such ids are rare, so the load reads every task row's key column
        alone and then looks the few digests up by key, instead of a second
        pass over the whole table for their full texts (a second scan of a
        million rows: a second on some servers).
        """
        # every digest is at least this long: a load of shorter ids (uuids) is
        # cleared by a C-level pass over their lengths (16 ms for a million,
        # where testing each id's prefix took 66-84 ms of the start-up read)
        if not task_ids or max(map(len, task_ids)) < _DIGEST_LENGTH or not any(map(is_digest, task_ids)):
            return
        at = {value: i for i, value in enumerate(task_ids) if is_digest(value)}
        backend, table = self.executor.backend, self.executor.tables.revocations
        keys = [("task", "", value) for value in at]
        for start in range(0, len(keys), backend.key_chunk):
            stmt = select(table.c.value, table.c.value_full).where(
                backend.key_in(table, keys[start:start + backend.key_chunk]))
            for value, value_full in conn.execute(stmt):
                task_ids[at[value]] = target_of("task", "", value, None, value_full).value

    def changes_since(self, marker: int, witness: Target | None = None) -> Changes:
        """Rows written (revoked or un-revoked) after ``marker``, in version order.

        One statement, since every worker runs it at every poll (through a
        pooler, each statement is a round trip to the server): the clock
        row, outer-joined to the rows newer than ``marker``, so an idle
        poll still returns the clock's one row.  The statement's one
        snapshot sees a cleanup's deletions together with the
        ``purged_version`` it recorded (see :meth:`Purge.purge_expired`).  The
        same row carries the clock's version and what the database says it
        is, so a reader learns in the same round trip whether its marker
        still means anything here (see revstore.identity).

        ``witness``: a row the reader pulled at its marker's version.  Its
        version now comes back too (one primary-key lookup): a table put
        back from a copy loses it, or gives it an older version, even once
        later writes have taken the clock past the reader's marker again.
        """
        ex = self.executor
        params: dict[str, Any] = {"marker": marker, "ahead": marker + _AHEAD}
        if witness is not None:
            k, h, v = _keys.stored(witness.kind, witness.header, witness.value)[0]
            params.update(witness_kind=k, witness_header=h, witness_value=v)

        def read(conn: Connection) -> Changes:
            identity = ex.identity_columns(conn)
            stmt = self._changes_statement(identity, witness is not None)
            found = conn.execute(stmt, params).all()
            first, skip = found[0], 4 + len(identity)
            purged, now = int(first[0]), ex.backend.as_datetime(first[2])
            rows = [ex.revocation(r[skip:], now) for r in found if r[skip] is not None]
            new_marker = max([marker] + [r.version for r in rows])
            return Changes(rows, new_marker, purged > marker, now, int(first[1]), ex.identity(first[4:skip]),
                           purged, None if first[3] is None else int(first[3]))

        return ex.run(read)

    def _changes_statement(self, identity: list[Any], with_witness: bool) -> Select[Any]:
        """:meth:`changes_since`'s statement, built once and bound by parameters at each poll.

        Every worker runs it at every poll and at every wake-up: building it
        anew (an alias of the table, a dozen columns, its cache key) cost
        about 1.4 ms of CPU a time, some 60 % of a pull's, which a fleet
        woken at once pays N times over on its hosts.
        """
        cached = self._changes.get(with_witness)
        if cached is not None and cached[0] is identity:
            return cached[1]
        ex = self.executor
        table, clock = ex.tables.revocations, ex.tables.clock
        witness_version: Any = null()
        if with_witness:
            seen = table.alias("witness")
            witness_version = (select(seen.c.version)
                               .where(seen.c.kind == bindparam("witness_kind"),
                                      seen.c.header == bindparam("witness_header"),
                                      seen.c.value == bindparam("witness_value"))
                               .scalar_subquery())
        newer = and_(table.c.version > bindparam("marker"), table.c.version <= bindparam("ahead"))
        stmt = (
            select(clock.c.purged_version, clock.c.version, ex.now(), witness_version, *identity, *ex.columns())
            .select_from(clock.outerjoin(table, newer))
            .where(clock.c.id == 1)
            .order_by(table.c.version)
        )
        self._changes[with_witness] = (identity, stmt)
        return stmt

    def identity(self) -> DbIdentity:
        """Which database this is: what a marker and a local snapshot belong to (see revstore.identity)."""
        ex = self.executor
        return ex.run(lambda conn: ex.identity(conn.execute(select(*ex.identity_columns(conn))).one()))

    def db_now(self) -> datetime:
        """The database server's current time, timezone-aware (a worker's clock anchor)."""
        ex = self.executor
        return ex.run(lambda conn: ex.backend.aware(ex.db_now(conn)))

    def ping(self) -> None:
        """Raise DatabaseUnavailable/SchemaError unless the tables can be read."""
        clock = self.executor.tables.clock
        self.executor.run(lambda conn: conn.execute(select(clock.c.version)).first())

    def notify(self, channel: str) -> None:
        """Notify ``channel`` the way writers do, pooler included (a listener's liveness probe)."""
        self.executor.run(lambda conn: self.executor.backend.notify(conn, channel, 0))

    def listener(self, on_change: Callable[[], None], name: str, *, url: URL | None = None,
                 check_interval: float = _config.DEFAULT_LISTEN_CHECK_INTERVAL,
                 fallback_interval: float = _config.DEFAULT_SYNC_INTERVAL) -> Listener | None:
        """A not yet started listener calling ``on_change`` when anyone writes; None where changes can only be polled.

        It connects to ``url`` (``revstore_listen_url``) or the store's, and
        proves it hears by probes sent through this store every ``check_interval``.
        """
        ex = self.executor
        url = url or ex.url
        return ex.backend.listener(url, ex.channel, on_change, name, probe=self.notify,
                                   check_interval=check_interval, fallback_interval=fallback_interval,
                                   shown_as=_config.mask_url(url))
