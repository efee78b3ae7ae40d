"""What operators ask: single rows, pages for browsing, counts, and the audit trail.

The CLI, the web console, export and ``/metrics`` read through here.  None
of it is on a worker's hot path, but every query must cost the same at a
million rows as at ten: pages follow the primary key, counts use indexes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, tuple_
from sqlalchemy.engine import Connection

from . import audit as _audit
from . import config as _config
from . import keys as _keys
from .errors import InvalidInput
from .executor import Door
from .records import Kind, Revocation, Target, as_target, unique_targets
from .schema import KINDS


class OperatorQueries(Door):
    """Reads for people and exports: rows, pages, counts, history."""

    def get(self, target: Target | str) -> Revocation | None:
        """The row for one target, tombstones and expired rows included."""
        t = as_target(target)
        return self.get_many([t]).get(t)

    def get_many(self, targets: Iterable[Target | str]) -> dict[Target, Revocation]:
        """The rows of many targets (tombstones and expired rows included); absent ones are left out."""
        ex = self.executor
        items = unique_targets(targets)

        def read(conn: Connection) -> dict[Target, Revocation]:
            now = ex.db_now(conn)
            found: dict[Target, Revocation] = {}
            for chunk in ex.key_chunks(items):
                for row in conn.execute(select(*ex.columns()).where(ex.key_in(chunk))):
                    revocation = ex.revocation(row, now)
                    found[revocation.target] = revocation
            return found

        return ex.run(read) if items else {}

    def is_revoked(self, target: Target | str) -> bool:
        row = self.get(target)
        return bool(row and row.active and (row.remaining is None or row.remaining > 0))

    def iter_active(self, kind: Kind | None = None, *, limit: int | None = None) -> list[Revocation]:
        """Every unexpired revocation (optionally of one kind), oldest first."""
        ex = self.executor
        table = ex.tables.revocations

        def read(conn: Connection) -> list[Revocation]:
            now = ex.db_now(conn)
            stmt = select(*ex.columns()).where(
                table.c.active, or_(table.c.expires_at.is_(None), table.c.expires_at > ex.now())
            )
            if kind is not None:
                stmt = stmt.where(table.c.kind == kind)
            stmt = stmt.order_by(table.c.version, table.c.value)
            if limit is not None:
                stmt = stmt.limit(limit)
            return [ex.revocation(r, now) for r in conn.execute(stmt)]

        return ex.run(read)

    def iter_rows(self, page: int = 10_000) -> Iterator[Revocation]:
        """Every row, tombstones and expired ones too, in key order.

        One short read per page (keyset pagination), so exporting millions of
        rows holds neither a long transaction nor the whole table in memory.
        """
        ex = self.executor
        table = ex.tables.revocations
        key = tuple_(table.c.kind, table.c.header, table.c.value)
        after: tuple[str, str, str] | None = None
        while True:
            def read(conn: Connection) -> list[tuple[Sequence[Any], Revocation]]:
                stmt = select(*ex.columns()).order_by(table.c.kind, table.c.header, table.c.value).limit(page)
                if after is not None:
                    stmt = stmt.where(key > tuple_(*(literal(v) for v in after)))
                now = ex.db_now(conn)
                return [(r[:3], ex.revocation(r, now)) for r in conn.execute(stmt)]

            rows = ex.run(read)
            yield from (revocation for _, revocation in rows)
            if len(rows) < page:
                return
            after = tuple(rows[-1][0])  # type: ignore[assignment]  # the stored key, a digest for a long one

    def current_version(self) -> int:
        """The clock's version: how many writes the table has taken (``revstore stats``, /metrics)."""
        clock = self.executor.tables.clock
        return int(self.executor.run(
            lambda conn: conn.execute(select(clock.c.version).where(clock.c.id == 1)).scalar_one()))

    def next_expiry(self) -> float | None:
        """Seconds until the soonest active revocation expires (None: none expires), for /metrics.

        One descent of the ``expires_at`` index (a min() the planner answers
        with a one-row index scan), so a scrape costs the same at a million rows.
        """
        ex = self.executor
        table = ex.tables.revocations

        def read(conn: Connection) -> float | None:
            now = ex.backend.aware(ex.db_now(conn))
            soonest = conn.execute(select(func.min(table.c.expires_at))
                                   .where(table.c.active, table.c.expires_at > ex.now())).scalar_one()
            if soonest is None:
                return None
            return max(0.0, (ex.backend.aware(soonest) - now).total_seconds())

        return ex.run(read)

    def stats(self) -> dict[str, Any]:
        """Counts for operators: active by kind, expired awaiting cleanup, tombstones."""
        ex = self.executor
        table, clock = ex.tables.revocations, ex.tables.clock

        def read(conn: Connection) -> dict[str, Any]:
            expired = and_(table.c.expires_at.is_not(None), table.c.expires_at <= ex.now())
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
                "database": _config.mask_url(ex.url),
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
            out["installation"] = ex.identity(conn.execute(select(*ex.identity_columns(conn))).one()).as_record()
            # the last time a worker found the database changed under it, and what it saw
            out["rewound_at"] = rewound_at.isoformat() if rewound_at is not None else None
            out["rewound"] = rewound_note
            out.update(ex.backend.extra_stats(conn, ex.channel))
            return out

        return ex.run(read)

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
        ex = self.executor
        table = ex.tables.revocations
        key = tuple_(table.c.kind, table.c.header, table.c.value)
        stmt = select(*ex.columns())
        if kind is not None:
            stmt = stmt.where(table.c.kind == kind)
        if active is True:
            stmt = stmt.where(table.c.active, or_(table.c.expires_at.is_(None), table.c.expires_at > ex.now()))
        elif active is False:
            stmt = stmt.where(~table.c.active)
        if terminate is not None:
            stmt = stmt.where(table.c.terminate == terminate)
        if expiring_within is not None:
            stmt = stmt.where(table.c.expires_at > ex.now(),
                              table.c.expires_at <= ex.backend.now_plus(expiring_within))
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
            db_now = ex.db_now(conn)
            found = {r.target: r for q in reads for r in (ex.revocation(row, db_now) for row in conn.execute(q))}
            return sorted(found.values(), key=Revocation.page_key)[:limit]

        return ex.run(read)

    def overview(self, expiring_within: float = 3600.0, days: int = 14) -> dict[str, Any]:
        """What an operator's front page shows: :meth:`stats`, what expires soon, and writes per day."""
        ex = self.executor
        table = ex.tables.revocations
        out = self.stats()

        def read(conn: Connection) -> None:
            now = ex.now()
            out["expiring_soon"] = int(conn.execute(
                select(func.count()).where(table.c.active, table.c.expires_at > now,
                                           table.c.expires_at <= ex.backend.now_plus(expiring_within))
            ).scalar_one())
            day = func.date(table.c.revoked_at)
            since = ex.backend.now_plus(-days * 86400.0)
            out["per_day"] = [
                (str(d), int(n)) for d, n in conn.execute(
                    select(day, func.count()).where(table.c.revoked_at >= since).group_by(day).order_by(day))
            ]
            out["expiring_within"] = expiring_within

        ex.run(read)
        return out

    def audit_history(self, *, key: Target | str | None = None, actor: str | None = None,
                      since: float | None = None, limit: int | None = None,
                      newest_first: bool = False) -> list[_audit.AuditEntry]:
        """Audit rows, oldest first: those naming ``key`` among their first keys, by ``actor``,
        of the last ``since`` seconds (database time).  ``newest_first`` with ``limit``: the latest ones."""
        ex = self.executor
        target = as_target(key) if key is not None else None
        if since is not None and not since > 0:
            raise InvalidInput(f"revstore: since must be a positive number of seconds, not {since!r}")
        stmt = _audit.query(ex.tables, key=target, actor=actor,
                            since=None if since is None else ex.backend.now_plus(-since), limit=limit,
                            newest_first=newest_first)
        return ex.run(lambda conn: [_audit.entry(row, ex.backend.aware) for row in conn.execute(stmt)])
