"""Revoke, un-revoke, extend and import: every write that takes a clock version.

Each write is one transaction holding a new version of the clock row (see
revstore.schema), so readers that poll by version see every commit in
order, and each one tells listening workers on commit.  The rules of an
upsert (what a re-revoke may change) are here; how a database phrases it
is its backend's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Interval, and_, bindparam, case, func, literal, null, or_, select, true, update
from sqlalchemy.engine import Connection

from . import audit as _audit
from .backends import Merge
from .executor import Door, actor, stored_key, stored_keys, stored_rows
from .records import DEFAULT, Revocation, Target, WriteResult, as_target, normalize_signal, unique_keys, unique_targets
from .schema import MAX_REASON_LENGTH, REWOUND_NOTE_LENGTH, Tables

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
        items = unique_keys(targets)
        sig = normalize_signal(signal) if signal is not None else ("SIGTERM" if terminate else None)
        if reason is not None:
            reason = str(reason)[:MAX_REASON_LENGTH].replace("\x00", "")
        by = actor(revoked_by)
        if not items:
            return WriteResult(0, 0)
        until = ex.expiry(_CHECK_DATE, expires)
        lifetime = None if until is None else until - _CHECK_DATE
        slack = None if until is None else extend_slack(_CHECK_DATE, until)
        heard = None if heard_at is None else ex.backend.column_time(heard_at.astimezone(timezone.utc))
        ago = None if decided_ago is None else timedelta(seconds=max(0.0, decided_ago))
        values = {"terminate": bool(terminate), "signal": sig, "reason": reason, "revoked_by": by}

        def write(conn: Connection) -> WriteResult:
            # in the same transaction, before the clock lock: one commit, not two
            todo = self._uncovered(conn, items, bool(terminate), lifetime, slack) if if_needed else items
            if not todo:
                return WriteResult(0, 0)
            # plain ids sorted once, so each statement writes one stretch of the primary key: sorted
            # chunk by chunk, an import's 20 statements each touched every page of it (the audit
            # below still names the caller's first keys)
            ordered = sorted(todo) if len(todo) > ex.backend.upsert_chunk and isinstance(todo[0], str) else todo
            chunks = list(ex.key_chunks(ordered, ex.backend.upsert_chunk))  # type: ignore[arg-type]
            audit = _audit.values("revoke", todo, by, reason)
            fold = _revoke_fold(ex.tables, values, lifetime, slack, heard, ago, audit)
            folded = ex.backend.fold(conn, ex.tables, stored_keys(chunks[0]), fold, ex.channel) if ex.backend.folds \
                else None
            if folded is None:
                version, now = ex.bump_at(conn)
                changed = 0
            else:
                version, now, changed, _ = folded
                assert version is not None and now is not None  # no covered check: the clock is always taken
                chunks = chunks[1:]
            expires_at = None if lifetime is None else now + lifetime
            when = heard if heard is not None or ago is None else now - ago
            shared = {**values, "revoked_at": now, "expires_at": expires_at, "version": version, "active": True}
            merge = _revoke_merge(
                expires_at is None,
                lambda old, new: literal(expires_at - (slack or timedelta(0)), old.expires_at.type),
                None if when is None else lambda old, new: literal(when, old.revoked_at.type))
            for chunk in chunks:
                # a notification repeated in one transaction is delivered once
                changed += ex.backend.upsert(conn, ex.tables.revocations, stored_keys(chunk), shared, merge,
                                             notify=(ex.channel, version))
            if folded is None:
                conn.execute(ex.tables.audit.insert().values(done_at=now, **audit))
            return WriteResult(changed, version, len(todo) - changed)

        if ex.backend.folds and len(items) <= ex.backend.upsert_chunk:
            keys = stored_keys(items)
            # the covered check folds in where the statement can name the keys it writes (see FoldedWrite)
            if not if_needed or (not keys.rows and "".join(keys.task_ids).isascii()):
                audit = _audit.values("revoke", items, by, reason)
                fold = _revoke_fold(ex.tables, values, lifetime, slack, heard, ago, audit, if_needed, bool(terminate))
                version, _, changed, written = ex.run(
                    lambda conn: ex.backend.fold(conn, ex.tables, keys, fold, ex.channel), one_statement=True)
                return WriteResult(changed, version or 0, written - changed)
        return ex.run(write)

    def _uncovered(self, conn: Connection, items: list[Target] | list[str], terminate: bool,
                   lifetime: timedelta | None, slack: timedelta | None) -> list[Target] | list[str]:
        """``items`` but those whose active row is already at least as strong as this write.

        The expiry it must reach is counted from the database's time in the
        statement itself: no round trip to read the time first.
        """
        ex = self.executor
        table = ex.tables.revocations
        found: set[tuple[str, ...]] = set()
        for chunk in ex.key_chunks(items):  # type: ignore[arg-type]
            stmt = select(table.c.kind, table.c.header, table.c.value).where(ex.key_in(chunk), table.c.active)
            if terminate:
                stmt = stmt.where(table.c.terminate)
            if lifetime is None:
                stmt = stmt.where(table.c.expires_at.is_(None))
            else:
                least = ex.backend.now_plus((lifetime - (slack or timedelta(0))).total_seconds())
                stmt = stmt.where(or_(table.c.expires_at.is_(None), table.c.expires_at >= least))
            found.update(tuple(key) for key in conn.execute(stmt))
        if not found:
            return items
        return [item for item in items if stored_key(item) not in found]  # type: ignore[return-value]

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
                ex.backend.upsert(conn, table, stored_keys(chunk), shared, merge)
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


def _revoke_merge(never_expires: bool, longer_than: Callable[[Any, Any], Any],
                  heard: Callable[[Any, Any], Any] | None) -> Merge:
    """The rule of a re-revoke: insert, or strengthen a row.

    A tombstone is revived unless it was written after ``heard(old, new)``
    (the time the revoke was heard).  An active row's expiry moves only to
    one later than ``longer_than(old, new)``: the new expiry less its slack
    (see :func:`extend_slack`).  Both are SQL of the old and new rows, so
    the rule is the same whether the database or the caller knows the time.
    """

    def merge(old: Any, new: Any) -> tuple[dict[str, Any], Any]:
        stronger = and_(new.terminate, ~old.terminate)
        if never_expires:
            longer = old.expires_at.is_not(None)
        else:
            longer = and_(old.expires_at.is_not(None), old.expires_at < longer_than(old, new))
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
        revive = ~old.active if heard is None else and_(~old.active, old.revoked_at < heard(old, new))
        return set_, or_(revive, and_(old.active, or_(stronger, longer)))

    return merge


def _revoke_fold(tables: Tables, values: dict[str, Any], lifetime: timedelta | None, slack: timedelta | None,
                 heard: datetime | None, ago: timedelta | None, audit: dict[str, Any], if_needed: bool = False,
                 terminate: bool = False) -> FoldedWrite:
    """:meth:`Writes.add` as one statement where the database can: its time and version are SQL there.

    Every value is a bound parameter, so writes of one shape share one
    compiled statement.  ``if_needed``: keys whose row already covers the
    write (as :meth:`Writes._uncovered` decides) are left out.
    """
    table = tables.revocations

    def covered(row: Any, now: Any) -> Any:
        strong = [row.active]
        if terminate:
            strong.append(row.terminate)
        if lifetime is None:
            strong.append(row.expires_at.is_(None))
        else:
            strong.append(or_(row.expires_at.is_(None), row.expires_at >= now + param("least", Interval())))
        return and_(*strong)

    def param(name: str, type_: Any) -> Any:
        return bindparam(f"revstore_{name}", type_=type_)

    def plan(now: Any, version: Any) -> tuple[dict[str, Any], Merge, dict[str, Any]]:
        columns = {name: param(name, table.c[name].type) for name in values}
        columns.update(revoked_at=now, version=version, active=true(),
                       expires_at=null() if lifetime is None else now + param("lifetime", Interval()))
        if heard is not None:
            when: Callable[[Any, Any], Any] | None = lambda old, new: param("heard", old.revoked_at.type)
        else:
            when = None if ago is None else lambda old, new: new.revoked_at - param("ago", Interval())
        merge = _revoke_merge(lifetime is None, lambda old, new: new.expires_at - param("slack", Interval()), when)
        return columns, merge, {"done_at": now, **{name: param(f"audit_{name}", tables.audit.c[name].type)
                                                   for name in audit}}

    least = None if lifetime is None else lifetime - (slack or timedelta(0))
    params = {f"revstore_{name}": value for name, value in
              {**values, "lifetime": lifetime, "slack": slack, "heard": heard, "ago": ago, "least": least}.items()}
    params.update({f"revstore_audit_{name}": value for name, value in audit.items()})
    shape = ("revoke", lifetime is None, heard is not None, ago is not None, if_needed, if_needed and terminate)
    return FoldedWrite(shape, plan, params, covered if if_needed else None)


@dataclass(frozen=True)
class FoldedWrite:
    """A versioned write for a database that takes the clock, upserts, audits and notifies in one statement.

    ``plan(now, version)`` gives, for the statement's own time and new
    version as SQL: the written columns, the merge rule, and the audit row.
    Bound parameters in them take ``params``.  Equal ``shape`` means equal
    SQL, so a backend compiles each shape once: a write-through is one
    round trip, and building the statement each time cost more than it.

    ``covered(row, now)``: the keys are plain task ids, and those whose row
    meets this condition are not written.  The clock is then taken only if
    some key is left, and the audit row counts and names the keys left
    (``key_count``, ``first_keys``, as :func:`revstore.audit.values` would).
    """

    shape: Hashable
    plan: Callable[[Any, Any], tuple[dict[str, Any], Merge, dict[str, Any]]]
    params: dict[str, Any]
    covered: Callable[[Any, Any], Any] | None = None
