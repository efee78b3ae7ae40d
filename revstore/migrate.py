"""Alembic, driven from code: the CLI's ``db`` commands and the schema check.

The migration scripts ship inside the wheel as ``revstore/migrations``; in a
checkout they are the top-level ``migrations/`` directory.  revstore keeps its
own version table (``<prefix>schema_version``) so it can share a database
with an application that already uses Alembic.

Upgrades follow the expand/contract rules of ``revstore.window``:
``upgrade`` runs expand steps only, ``contract`` the rest.  Besides Alembic's
version table, every step maintains two rows other releases read:
``<prefix>schema_info`` (the window, read by workers of 0.2.0 and later) and
``<prefix>alembic_version`` (read by 0.1.0 workers, kept at 0.1.0's own
revision while the schema stays compatible with 0.1.0).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable

from ._version import __version__
from .config import mask_url
from .errors import RevstoreError, SchemaError
from .executor import Door, short_error
from .schema import Tables, version_table
from .window import INSTALLATION_ID_REVISION, LEGACY_HEAD, SCHEMA_INFO_REVISION, Chain, SchemaState, Step, Verdict, assess


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RevstoreError("revstore: migration scripts not found; reinstall revstore")


def alembic_config(store: Door, *, output: io.StringIO | None = None,
                   lock_timeout: float | None = None) -> Config:
    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["revstore_store"] = store
    cfg.attributes["revstore_lock_timeout"] = lock_timeout
    return cfg


def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(migrations_dir()))


def chain() -> Chain:
    """This package's migrations with what each declares about the window."""
    scripts = _scripts()
    revisions = list(scripts.walk_revisions())
    revisions.reverse()
    return Chain(tuple(Step.of(r.revision, r.module) for r in revisions))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def read_state(store: Door) -> SchemaState:
    """The schema's revision and window, as a worker sees them (SELECTs only).

    ``schema_info`` is the source of truth; a database that predates it (0.1.0,
    or an empty one) falls back to the version tables.
    """
    tables = store.tables
    conn = store.executor.connect()
    table = tables.schema_info.name
    try:
        present = set(inspect(conn).get_table_names(schema=tables.schema))
        info = tables.schema_info
        row = _read_if_there(conn, select(info.c.revision, info.c.schema_release, info.c.oldest_release),
                             listed=info.name in present, missing=store.backend.is_missing_table)
        if row is not None:
            return SchemaState(row.revision, row.schema_release, row.oldest_release)
        for table in (tables.version_table, tables.legacy_version_table):
            if table in present:
                versions = version_table(table, tables.schema)
                revision = conn.execute(select(versions.c.version_num)).scalar()
                if revision is not None:
                    return SchemaState(revision)
        return SchemaState(None)
    except DBAPIError as exc:  # most often a role without SELECT on the table
        raise SchemaError(
            f"revstore: cannot read the schema version in {mask_url(store.url)}: {short_error(exc)}; "
            f"the role needs SELECT on {table} (see `revstore db grants`)"
        ) from None
    finally:
        conn.close()


def _read_if_there(conn: Connection, query: Any, *, listed: bool, missing: Callable[[BaseException], bool]) -> Any:
    """The first row of ``query``, None if its table does not exist.

    MySQL lists only the tables a role may read: a table missing from the
    listing is read anyway (in a savepoint), so a role without the grant
    gets "needs SELECT" rather than "no revstore schema".
    """
    if listed:
        return conn.execute(query).first()
    try:
        with conn.begin_nested():
            return conn.execute(query).first()
    except DBAPIError as exc:
        if missing(exc):
            return None
        raise


def current_revision(store: Door) -> str | None:
    return read_state(store).revision


def assess_schema(store: Door, release: str = __version__, state: SchemaState | None = None) -> Verdict:
    """compatible / upgrade needed / package too old, and the admin's next step.

    ``state``: the schema's row as the caller already read it (a worker's
    start-up read carries it), else it is read here.
    """
    return assess(read_state(store) if state is None else state, chain(), release, mask_url(store.url))


def check_schema(store: Door, release: str = __version__, state: SchemaState | None = None) -> Verdict:
    """Raise SchemaError unless workers of ``release`` may run against the database (``state``: see assess_schema)."""
    verdict = assess_schema(store, release, state)
    if not verdict.ok:
        raise SchemaError(verdict.message)
    return verdict


def _run(fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kwargs)
    except CommandError as exc:
        raise RevstoreError(f"revstore: {exc}") from None


def _reachable(store: Door) -> None:
    """Fail with the store's one-line DatabaseUnavailable before Alembic starts."""
    store.executor.connect().close()


def _expand_target(steps: Chain, current: str | None, revision: str | None) -> str | None:
    """Where ``db upgrade`` goes: ``revision`` if no contract step lies on the way."""
    if revision is None or revision == "head":
        return steps.expand_target(current)
    if steps.index(revision) is None:
        raise RevstoreError(f"revstore: no migration {revision!r} in this revstore ({__version__})")
    pending = steps.pending(current)
    names = [s.revision for s in pending]
    for step in pending[: names.index(revision) + 1] if revision in names else ():
        if step.phase == "contract":
            raise RevstoreError(
                f"revstore: migration {step.revision} is a contract step; run `revstore db contract` "
                f"once no worker older than revstore {step.oldest_release} remains"
            )
    return revision


def _known_current(store: Door, steps: Chain) -> str | None:
    """The database's revision, which this package must know to migrate from it."""
    _reachable(store)
    current = current_revision(store)
    if steps.index(current) is None:
        raise SchemaError(
            f"revstore: {mask_url(store.url)} is at schema revision {current}, which this revstore "
            f"{__version__} does not know; run `revstore db` commands with the newer revstore package"
        )
    return current


def upgrade(store: Door, revision: str | None = None, *, lock_timeout: float | None = None) -> None:
    """Run the expand steps (up to ``revision``): safe while older workers run.

    ``lock_timeout``: give up, rather than queue every worker's writes behind
    the migration, when a lock is not granted within this many seconds.
    """
    steps = chain()
    current = _known_current(store, steps)
    target = _expand_target(steps, current, revision)
    if target is not None and target != current:
        _migrate(store, target, lock_timeout)


def contract(store: Door, *, lock_timeout: float | None = None) -> None:
    """Run every pending step, contract steps included: once no older worker remains."""
    steps = chain()
    if _known_current(store, steps) != steps.head.revision:
        _migrate(store, "head", lock_timeout)


def _migrate(store: Door, target: str, lock_timeout: float | None) -> None:
    try:
        _run(command.upgrade, alembic_config(store, lock_timeout=lock_timeout), target)
    except DBAPIError as exc:
        if lock_timeout and store.backend.is_lock_timeout(exc):
            raise RevstoreError(
                f"revstore: the migration waited {lock_timeout:g}s for a lock on revstore's tables in "
                f"{mask_url(store.url)} and gave up; a long transaction holds it: retry when it ends, or "
                "give --lock-timeout more seconds") from None
        raise


def downgrade(store: Door, revision: str) -> None:
    """Downgrade; ``base`` also drops revstore's version tables.

    Alembic leaves an empty version table behind at base.  Ours exist only
    for revstore, so removing revstore should leave nothing of it behind (the
    PostgreSQL schema stays: it may hold other things).
    """
    _reachable(store)
    _run(command.downgrade, alembic_config(store), revision)
    if revision == "base" and current_revision(store) is None:
        with store.engine.begin() as conn:
            for name in (store.tables.version_table, store.tables.legacy_version_table):
                version_table(name, store.tables.schema).drop(conn, checkfirst=True)


def offline_sql(store: Door, since: str | None = None, phase: str = "all") -> str:
    """The DDL ``db upgrade`` (expand) and ``db contract`` would run from ``since``, for DBAs.

    Each part starts with a comment saying when to run it.
    """
    steps = chain()
    if steps.index(since) is None:
        raise RevstoreError(f"revstore: no migration {since!r} in this revstore ({__version__})")
    expanded = steps.expand_target(since)
    parts = []
    if phase in ("expand", "all"):
        parts.append(("expand", since, expanded,
                      "run before deploying this release; workers already running keep working"))
    if phase in ("contract", "all"):
        contracts = [s for s in steps.pending(expanded) if s.phase == "contract"]
        note = (f"run once no worker older than revstore {contracts[-1].oldest_release} remains"
                if contracts else "")
        parts.append(("contract", expanded, steps.head.revision, note))
    out = io.StringIO()
    for name, start, end, note in parts:
        if start == end:
            out.write(f"-- revstore: no {name} steps pending\n\n")
            continue
        out.write(f"-- revstore: {name} steps {start or 'base'} -> {end}: {note}\n\n")
        cfg = alembic_config(store, output=out)
        cfg.attributes["revstore_offline_from"] = start
        _run(command.upgrade, cfg, f"{start}:{end}" if start else end, sql=True)
    return out.getvalue()


def offline_downgrade_sql(store: Door, revision: str, downgrade_from: str) -> str:
    """The DDL of a downgrade ``downgrade_from`` -> ``revision``."""
    out = io.StringIO()
    _run(command.downgrade, alembic_config(store, output=out), f"{downgrade_from}:{revision}", sql=True)
    return out.getvalue()


# ------------------------------------------------------------ bookkeeping
# Called from migrations/env.py, inside Alembic's run.


def prepare_online(conn: Connection, tables: Tables) -> None:
    """Before migrating: adopt a 0.1.0 database and make sure the legacy table exists.

    0.1.0 kept Alembic's revision in ``<prefix>alembic_version``; Alembic now
    keeps it in ``<prefix>schema_version``, which starts as a copy.
    """
    present = set(inspect(conn).get_table_names(schema=tables.schema))
    legacy = version_table(tables.legacy_version_table, tables.schema)
    if tables.version_table not in present and tables.legacy_version_table in present:
        revision = conn.execute(select(legacy.c.version_num)).scalar()
        if revision is not None:
            versions = version_table(tables.version_table, tables.schema)
            versions.create(conn)
            conn.execute(versions.insert().values(version_num=revision))
    legacy.create(conn, checkfirst=True)


def prepare_offline(context: Any, tables: Tables, start: str | None) -> None:
    """The offline twin of ``prepare_online``, for an upgrade script starting at ``start``."""
    legacy = version_table(tables.legacy_version_table, tables.schema)
    if start is None:
        context.execute(CreateTable(legacy))
    elif start == LEGACY_HEAD:  # a database 0.1.0 created: Alembic's table does not exist yet
        versions = version_table(tables.version_table, tables.schema)
        context.execute(CreateTable(versions))
        context.execute(versions.insert().values(version_num=LEGACY_HEAD))


def record_step(tables: Tables, ctx: MigrationContext, step: MigrationInfo, **_: Any) -> None:
    """After each step, in its transaction: write the window and the legacy revision.

    Written from the step's own declarations, so a migration author only sets
    ``phase``, ``release`` and ``oldest_release``.
    """
    if step.is_upgrade:
        revision: str | None = step.up_revision_id
    else:
        revision = step.down_revision_ids[0] if step.down_revision_ids else None
    legacy = version_table(tables.legacy_version_table, tables.schema)
    ctx.execute(legacy.delete())
    if revision is None:  # downgraded to base
        return
    script = step.revision_map.get_revision(revision)
    assert script is not None
    declared = Step.of(revision, script.module)  # type: ignore[attr-defined]
    ctx.execute(legacy.insert().values(version_num=declared.legacy_revision))
    ancestry = {r.revision for r in step.revision_map.iterate_revisions(revision, "base")}
    if SCHEMA_INFO_REVISION not in ancestry:
        return
    info = tables.schema_info
    window = {"revision": revision, "schema_release": declared.release, "oldest_release": declared.oldest_release}
    if INSTALLATION_ID_REVISION not in ancestry:
        ctx.execute(info.delete())
        ctx.execute(info.insert().values(id=1, **window))
    elif step.is_upgrade and revision == INSTALLATION_ID_REVISION:
        # the step that brings the column names the installation, once
        ctx.execute(info.update().where(info.c.id == 1).values(installation_id=uuid.uuid4().hex, **window))
    else:  # later steps keep the id: the row is updated in place
        ctx.execute(info.update().where(info.c.id == 1).values(**window))
