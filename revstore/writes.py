"""Revoke, un-revoke, extend and import: every write that takes a clock version.

Each write is one transaction holding a new version of the clock row (see
revstore.schema), so readers that poll by version see every commit in
order, and each one tells listening workers on commit.  The rules of an
upsert (what a re-revoke may change) are here; how a database phrases it
is its backend's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, true, update
from sqlalchemy.engine import Connection

from . import audit as _audit
from . import keys as _keys
from .executor import Door, actor, stored_rows
from .records import DEFAULT, Revocation, Target, WriteResult, as_target, normalize_signal, unique_targets
from .schema import MAX_REASON_LENGTH, REWOUND_NOTE_LENGTH

#: See _upsert: how much later a re-revoke's expiry must be to rewrite the row (at most).
EXTEND_SLACK = timedelta(seconds=60)


def extend_slack(now: datetime, expires_at: datetime) -> timedelta:
    """How much later than a row's expiry a write's must be to move it: a hundredth of its lifetime, at most a minute.

    N workers writing one broadcast a few ms apart must not each rewrite the
    row to move its expiry by milliseconds.  But a revoke's lifetime is a
    promise: ``expires=7`` given 3 s after ``expires=6`` must keep the id
    revoked 7 s from the second revoke (a flat minute of slack swallowed it,
    and the checker saw the task run).  Default lifetimes (days) keep the minute.
    """
    return min(EXTEND_SLACK, max(expires_at - now, timedelta(0)) / 100)

#: A date any expiry can be added to: validates ``expires`` before touching the database.
_CHECK_DATE = datetime(2000, 1, 1)


class Writes(Door):
    """Writes of revocations, each in one versioned transaction."""

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
        ex = self.executor
        items = unique_targets(targets)
        sig = normalize_signal(signal) if signal is not None else ("SIGTERM" if terminate else None)
        if reason is not None:
            reason = str(reason)[:MAX_REASON_LENGTH].replace("\x00", "")
        by = actor(revoked_by)
        if not items:
            return WriteResult(0, 0)
        ex.expiry(_CHECK_DATE, expires)

        def write(conn: Connection) -> WriteResult:
            todo = items
            if if_needed:  # in the same transaction, before the clock lock: one commit, not two
                covered = self._covered_in(conn, items, bool(terminate), expires)
                todo = [t for t in items if t not in covered]
                if not todo:
                    return WriteResult(0, 0)
            version, now = ex.bump_at(conn)
            expires_at = ex.expiry(now, expires)
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
                heard = ex.backend.column_time(heard_at.astimezone(timezone.utc))
            changed = 0
            for chunk in ex.key_chunks(todo, ex.backend.upsert_chunk):
                # a notification repeated in one transaction is delivered once
                changed += self._upsert(conn, chunk, shared, expires_at, heard, notify=(ex.channel, version),
                                        slack=None if expires_at is None else extend_slack(now, expires_at))
            _audit.record(conn, ex.tables, "revoke", todo, by, reason, now)
            return WriteResult(changed, version, len(todo) - changed)

        return ex.run(write)

    def _covered_in(self, conn: Connection, items: list[Target], terminate: bool, expires: Any) -> set[Target]:
        """The targets whose active row is already at least as strong as this write."""
        ex = self.executor
        table = ex.tables.revocations
        now = ex.db_now(conn)
        wanted = ex.expiry(now, expires)
        found: set[Target] = set()
        for chunk in ex.key_chunks(items):
            stmt = select(table.c.kind, table.c.header, table.c.value).where(ex.key_in(chunk), table.c.active)
            if terminate:
                stmt = stmt.where(table.c.terminate)
            if wanted is None:
                stmt = stmt.where(table.c.expires_at.is_(None))
            else:
                slack = extend_slack(now, wanted)
                stmt = stmt.where(or_(table.c.expires_at.is_(None), table.c.expires_at >= wanted - slack))
            stored = {_keys.stored(t.kind, t.header, t.value)[0]: t for t in chunk}
            found.update(stored[tuple(key)] for key in conn.execute(stmt))  # type: ignore[index]
        return found

    def put_rows(self, rows: Sequence[Revocation], *, imported_by: str | None = None) -> WriteResult:
        """Write rows exactly as given (times, reason, revoker), for ``revstore import``.

        A row already active in the table is left alone: an import never
        weakens or shortens a live revocation.  Tombstones in the table are
        replaced by active imported rows.  Versions are new (this database's).
        The rows keep their own ``revoked_by``; the audit names ``imported_by``
        (default: user@host), who ran the import.
        """
        ex = self.executor
        by = actor(imported_by)
        items = list(rows)
        for row in items:
            as_target(row.target)
        if not items:
            return WriteResult(0, 0)

        def when(value: datetime | None) -> datetime | None:
            if value is None:
                return None
            if value.tzinfo is None:  # an export's times are UTC
                value = value.replace(tzinfo=timezone.utc)
            return ex.backend.column_time(value)

        def merge(old: Any, new: Any) -> tuple[dict[str, Any], Any]:
            # only a tombstone is replaced, and only by an active row
            names = [c.name for c in ex.tables.revocations.c if c.name not in ("kind", "header", "value")]
            return {name: getattr(new, name) for name in names}, and_(~old.active, new.active)

        def write(conn: Connection) -> WriteResult:
            version, now = ex.bump_at(conn)
            changed, size = 0, ex.backend.row_chunk
            for start in range(0, len(items), size):
                part = items[start : start + size]
                values = [
                    {
                        **key,
                        "terminate": r.terminate and r.active,
                        "signal": normalize_signal(r.signal) if r.signal and r.active else None,
                        "reason": r.reason,
                        "revoked_by": r.revoked_by,
                        "revoked_at": when(r.revoked_at) or now,
                        "expires_at": when(r.expires_at),
                        "version": version,
                        "active": r.active,
                    }
                    for r, key in zip(part, stored_rows([r.target for r in part]))
                ]
                changed += ex.backend.upsert_rows(conn, ex.tables.revocations, values, merge)
            _audit.record(conn, ex.tables, "import", [r.target for r in items], by, None, now)
            if changed:
                ex.notify(conn, version)
            return WriteResult(changed, version if changed else 0)

        return ex.run(write)

    def _upsert(self, conn: Connection, items: list[Target], shared: dict[str, Any], expires_at: datetime | None,
                heard: datetime | None = None, notify: tuple[str, int] | None = None,
                slack: timedelta | None = None) -> int:
        """Insert or strengthen ``items``, every row with the ``shared`` column values.

        A tombstone is revived unless it was written after ``heard``.  An
        active row's expiry moves only when ``expires_at`` is more than
        ``slack`` (see :func:`extend_slack`) later.
        """

        def merge(old: Any, new: Any) -> tuple[dict[str, Any], Any]:
            stronger = and_(new.terminate, ~old.terminate)
            if expires_at is None:
                longer = old.expires_at.is_not(None)
            else:
                longer = and_(old.expires_at.is_not(None),
                              old.expires_at < literal(expires_at - (slack or timedelta(0)), old.expires_at.type))
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

        ex = self.executor
        return ex.backend.upsert(conn, ex.tables.revocations, stored_rows(items), shared, merge, notify)

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
        ex = self.executor
        by = actor(revoked_by)
        table = ex.tables.revocations

        def write(conn: Connection, items: list[Target], version: int, now: datetime) -> WriteResult:
            shared = {
                "terminate": False, "signal": None, "reason": None, "revoked_by": by, "revoked_at": now,
                "expires_at": now + timedelta(seconds=ex.tombstone_ttl), "version": version, "active": False,
            }
            was_active = 0

            def merge(old: Any, new: Any) -> tuple[dict[str, Any], Any]:
                return {name: getattr(new, name) for name in shared if name != "reason"}, true()

            for chunk in ex.key_chunks(items):
                was_active += int(conn.execute(
                    select(func.count()).select_from(table).where(ex.key_in(chunk), table.c.active)
                ).scalar_one())
                ex.backend.upsert(conn, table, stored_rows(chunk), shared, merge)
            _audit.record(conn, ex.tables, "restore", items, by, None, now)
            ex.notify(conn, version)
            return WriteResult(was_active, version)

        return self._versioned_write(targets, write)

    def extend(self, targets: Iterable[Target | str], expires: float, *, extended_by: str | None = None) -> WriteResult:
        """Keep active revocations at least ``expires`` seconds from now (database time).

        For a worker holding a task whose ETA is later than its revocation's
        expiry.  Unlike :meth:`add` it never revives a restored target, and it
        leaves rows that already last long enough (within :func:`extend_slack`) alone.
        The row's ``revoked_by`` stays; the audit names ``extended_by``
        (default: user@host), and only when a row changed: workers extend
        on their own, often with nothing to do.
        """
        ex = self.executor
        by = actor(extended_by)
        ex.expiry(_CHECK_DATE, expires)
        table = ex.tables.revocations

        def write(conn: Connection, items: list[Target], version: int, now: datetime) -> WriteResult:
            until = ex.expiry(now, expires)
            shorter = and_(table.c.expires_at.is_not(None), table.c.expires_at < until - extend_slack(now, until))
            changed = 0
            for chunk in ex.key_chunks(items):
                stmt = update(table).where(ex.key_in(chunk), table.c.active, shorter)
                result = conn.execute(stmt.values(expires_at=until, version=version))
                changed += max(result.rowcount or 0, 0)
            if changed:
                _audit.record(conn, ex.tables, "extend", items, by, None, now)
                ex.notify(conn, version)
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
        ex = self.executor
        return ex.run(lambda conn: body(conn, items, *ex.bump_at(conn)))

    def record_rewind(self, note: str) -> None:
        """Note in the clock row that a worker found the database changed under it (``revstore stats``)."""
        ex = self.executor
        clock = ex.tables.clock
        ex.run(lambda conn: conn.execute(update(clock).where(clock.c.id == 1).values(
            rewound_at=ex.db_now(conn), rewound_note=note[:REWOUND_NOTE_LENGTH])))
