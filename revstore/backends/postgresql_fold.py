"""PostgreSQL's folded revoke (see :meth:`PostgresBackend.fold`): the keys' relation and the one statement.

Apart from the backend class because the statement is built once per
shape and its parts are only used there and by the bulk upsert.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Text, bindparam, case, cast, column, exists, func, literal, null, select, true, union_all, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import Table

from ..keys import StoredKeys
from ..schema import AUDIT_KEYS, Tables
from .base import SqlBackend

if TYPE_CHECKING:
    from ..writes import FoldedWrite

T = TypeVar("T")

#: The key columns :func:`key_source` yields, in its order.
KEY_COLUMNS = ("kind", "header", "value", "header_full", "value_full")

#: Writes of this many keys or more try a plain INSERT first (see :func:`new_keys_first`).
PLAIN_FIRST = 1_000
#: The SQLSTATE of a key already stored.
UNIQUE_VIOLATION = "23505"
#: After a plain INSERT met a stored key, this many writes to that table go straight to the upsert.
UPSERTS_AFTER_A_MISS = 16
#: Those writes still due, by (schema, table), in this process: a guess, so no lock.
_upserts_due: dict[tuple[str | None, str], int] = {}


def new_keys_first(conn: Connection, table: Table, size: int, run: Callable[[bool], T]) -> T:
    """``run(True)``: the write as a plain INSERT; ``run(False)``, the upsert, if a key already had a row.

    ON CONFLICT inserts each row speculatively: a probe of the primary
    key, the heap tuple, its index entry, then a second WAL record to
    confirm it (the backend's CPU for 10,000 fresh ids: 80 ms, a plain
    INSERT 50-55 ms).  A bulk revoke's or an import's ids are nearly always
    new.  A key with a row (committed, or committed meanwhile by a writer
    that does not take the clock) fails the INSERT with a unique violation
    on the primary key at that row, the attempt is undone (its clock bump
    too: the statement in autocommit, else a savepoint) and the upsert
    decides as always.  Keys sorted, a re-revoke of a batch fails at its
    first stored key, early on; a lone stored key near the end of a fresh
    batch wastes the INSERT so far (135-142 ms against 80-84 ms for 10,000 ids) and
    leaves its dead rows to vacuum.  So after a miss the next
    ``UPSERTS_AFTER_A_MISS`` writes to the table skip the attempt: a caller
    whose batches keep holding a few stored keys pays it once in 17 writes.
    Smaller writes go straight to the upsert: a retry would cost them a
    round trip for a millisecond's gain.
    """
    where = (table.schema, table.name)
    due = _upserts_due.get(where, 0)
    if size < PLAIN_FIRST or due:
        if due and size >= PLAIN_FIRST:
            _upserts_due[where] = due - 1
        return run(False)
    autocommit = bool(getattr(conn.connection.driver_connection, "autocommit", False))
    savepoint = None if autocommit else conn.begin_nested()
    try:
        done = run(True)
    except IntegrityError as exc:
        # the table's one unique index is its primary key, whatever a DBA may have named it
        diag = getattr(exc.orig, "diag", None)
        if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION or getattr(diag, "table_name", None) != table.name:
            raise
        if savepoint is not None:
            savepoint.rollback()
        _upserts_due[where] = UPSERTS_AFTER_A_MISS
        return run(False)
    if savepoint is not None:
        savepoint.commit()
    return done


def task_id_rows(*, ordinality: bool = False) -> Any:
    """The task ids of :func:`key_params` as a relation of ``value`` (and ``ord``, their order).

    They travel as one text, joined by a character none of them holds, and
    ``string_to_array`` splits it in C.  As a JSON array, the client's
    ``json.dumps`` and the server's parse cost 0.8 s and 0.3-0.5 s for a
    million ids, the join and the split 0.13 s each.
    """
    split = func.string_to_array(bindparam("revstore_ids", type_=Text), bindparam("revstore_sep", type_=Text))
    ids = func.unnest(split).table_valued(column("value", Text), with_ordinality="ord" if ordinality else None)
    return ids.render_derived()


def key_source() -> Any:
    """The keys of a :class:`StoredKeys` as a relation, from the parameters of :func:`key_params`.

    A bulk revoke's task ids travel as one text (see :func:`task_id_rows`):
    no per-key list or dict in Python.  Other keys are a JSON array of
    their five columns: psycopg serialises it in C, and a JSON null
    becomes SQL NULL.
    """
    ids = task_id_rows()
    plain = select(literal("task", Text).label("kind"), literal("", Text).label("header"), ids.c.value,
                   cast(null(), Text).label("header_full"), cast(null(), Text).label("value_full"))
    key = column("key", postgresql.JSON)
    rows = func.json_array_elements(cast(bindparam("revstore_rows", type_=Text), postgresql.JSON))
    rows = rows.table_valued(key).render_derived()
    other = select(*(rows.c.key[i].astext.label(name) for i, name in enumerate(KEY_COLUMNS)))
    return union_all(plain, other).subquery("revstore_keys")


def key_params(keys: StoredKeys, *, in_order: bool = False) -> dict[str, str]:
    """The parameters of :func:`key_source`; ``in_order``: the task ids sorted, as the primary key holds them.

    Rows inserted in key order touch the primary key's pages one after
    the other instead of at random (some 10% of a 10,000-id insert); the
    C-level sort costs a few milliseconds.  A folded covered check keeps
    the caller's order, which names the audit's first keys.  The ids are
    joined by a newline unless one holds it; then by the first character
    none holds (there is one: the ids are finitely many characters).
    """
    ids = sorted(keys.task_ids) if in_order else keys.task_ids
    sep = "\n"
    joined = sep.join(ids)
    if joined.count(sep) != max(len(ids) - 1, 0):
        sep = next(c for c in map(chr, range(1, 0x10000)) if not "\ud800" <= c <= "\udfff" and c not in joined)
        joined = sep.join(ids)
    return {"revstore_ids": joined, "revstore_sep": sep, "revstore_rows": json.dumps(keys.rows)}


def compile_fold(backend: SqlBackend, conn: Connection, tables: Tables, write: FoldedWrite,
                 plain: bool = False) -> tuple[str, dict[str, Any]]:
    """The SQL of :meth:`PostgresBackend.fold` for ``write``'s shape, and its constant parameters.

    ``plain``: a plain INSERT, no merge, for keys that have no row (see :func:`new_keys_first`).
    """
    table, clock = tables.revocations, tables.clock
    left: Any = None
    if write.covered is None:
        source = key_source()
    else:  # plain task ids, those a row already covers left out (see FoldedWrite)
        ids = task_id_rows(ordinality=True)
        row = table.alias("rs_fold_row")
        # a lateral lookup with LIMIT, one primary-key probe per id: as NOT EXISTS the planner
        # hash-joined every row meeting the expiry condition (a whole bulk revoke's, written
        # a minute before with the default expiry: 0.4 s per write-through at 500,000 rows)
        hit = (select(literal(1).label("hit"))
               .where(row.c.kind == "task", row.c.header == "", row.c.value == ids.c.value,
                      write.covered(row.c, func.now()))
               .limit(1).lateral("rs_fold_hit"))
        left = (select(ids.c.value, ids.c.ord).select_from(ids.outerjoin(hit, true()))
                .where(hit.c.hit.is_(None)).cte("rs_fold_todo"))
        source = select(literal("task", Text).label("kind"), literal("", Text).label("header"), left.c.value,
                        cast(null(), Text).label("header_full"), cast(null(), Text).label("value_full")).subquery()
    bump = update(clock).where(clock.c.id == 1)
    if left is not None:
        bump = bump.where(exists(select(left.c.value)))
    bump = (bump.values(version=clock.c.version + 1)
            .returning(clock.c.version.label("version"), func.now().label("now")).cte("rs_fold_clock"))
    columns, merge, audit = write.plan(bump.c.now, bump.c.version)
    if left is not None:
        first = select(left.c.value, left.c.ord).order_by(left.c.ord).limit(AUDIT_KEYS).subquery()
        audit["key_count"] = select(func.count()).select_from(left).scalar_subquery()
        audit["first_keys"] = select(cast(func.json_agg(postgresql.aggregate_order_by(first.c.value, first.c.ord)),
                                          Text)).scalar_subquery()
    rows = select(*source.c, *(cast(v, table.c[name].type) for name, v in columns.items()))
    upsert = backend.insert(table).from_select([*KEY_COLUMNS, *columns], rows.select_from(source.join(bump, true())))
    written = upsert.returning(table.c.version) if plain else backend._on_conflict(upsert, table, merge)
    written = written.cte("rs_fold_written")
    audited = (backend.insert(tables.audit).from_select(list(audit), select(*audit.values()).select_from(bump))
               .returning(tables.audit.c.id).cte("rs_fold_audited"))
    version = select(bump.c.version).scalar_subquery()
    count = select(func.count()).select_from(written).scalar_subquery()
    told = func.pg_notify(bindparam("revstore_channel", type_=Text), cast(version, Text))
    # scalar subqueries, no FROM: one row even when every key was covered and no clock was taken
    results = [version, select(bump.c.now).scalar_subquery(), count, case((count > 0, told), else_=None),
               select(func.count()).select_from(audited).scalar_subquery()]
    if left is not None:
        results.append(select(func.count()).select_from(left).scalar_subquery())
    compiled = select(*results).compile(dialect=conn.dialect)
    return str(compiled), dict(compiled.params)
