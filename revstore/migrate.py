"""Alembic, driven from code: the CLI's ``db`` commands and the schema check.

The migration scripts ship inside the wheel as ``revstore/migrations``; in a
checkout they are the top-level ``migrations/`` directory.  revstore keeps its
own version table (``<prefix>alembic_version``) so it can share a database
with an application that already uses Alembic.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import MetaData, Table
from sqlalchemy.exc import DBAPIError

from .config import mask_url
from .errors import RevstoreError, SchemaError
from .store import RevocationStore, short_error


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RevstoreError("revstore: migration scripts not found; reinstall revstore")


def alembic_config(store: RevocationStore, *, output: io.StringIO | None = None) -> Config:
    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["revstore_store"] = store
    return cfg


@functools.cache  # the scripts do not change while the process runs; workers check at every start
def head_revision() -> str:
    script = ScriptDirectory(str(migrations_dir()))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(store: RevocationStore) -> str | None:
    tables = store.tables
    conn = store._connect()
    try:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": tables.version_table, "version_table_schema": tables.schema}
        )
        return ctx.get_current_revision()
    except DBAPIError as exc:  # most often a role without SELECT on the version table
        raise SchemaError(
            f"revstore: cannot read the schema version in {mask_url(store.url)}: {short_error(exc)}; "
            f"the role needs SELECT on {tables.version_table} (see `revstore db grants`)"
        ) from None
    finally:
        conn.close()


def check_schema(store: RevocationStore) -> str:
    """Raise SchemaError unless the database is at this revstore's head revision."""
    current = current_revision(store)
    head = head_revision()
    if current == head:
        return current
    where = mask_url(store.url)
    if current is None:
        raise SchemaError(f"revstore: {where} has no revstore schema; run `revstore db upgrade` as a database admin")
    script = ScriptDirectory(str(migrations_dir()))
    try:
        script.get_revision(current)
    except Exception:
        raise SchemaError(
            f"revstore: {where} has schema revision {current}, newer than this revstore knows (head {head}); "
            "upgrade the revstore package"
        ) from None
    raise SchemaError(f"revstore: {where} is at schema revision {current}, not {head}; run `revstore db upgrade`")


def _run(fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kwargs)
    except CommandError as exc:
        raise RevstoreError(f"revstore: {exc}") from None


def _reachable(store: RevocationStore) -> None:
    """Fail with the store's one-line DatabaseUnavailable before Alembic starts."""
    store._connect().close()


def upgrade(store: RevocationStore, revision: str = "head") -> None:
    _reachable(store)
    _run(command.upgrade, alembic_config(store), revision)


def downgrade(store: RevocationStore, revision: str) -> None:
    """Downgrade; ``base`` also drops revstore's own version table.

    Alembic leaves an empty version table behind at base.  Ours exists only
    for revstore, so removing revstore should leave nothing of it behind (the
    PostgreSQL schema stays: it may hold other things).
    """
    _reachable(store)
    _run(command.downgrade, alembic_config(store), revision)
    if revision == "base" and current_revision(store) is None:
        version = Table(store.tables.version_table, MetaData(schema=store.tables.schema))
        with store.engine.begin() as conn:
            version.drop(conn, checkfirst=True)


def offline_sql(store: RevocationStore, revision: str = "head", downgrade_from: str | None = None) -> str:
    """The DDL an upgrade (or a downgrade ``from:to``) would run, for DBAs."""
    out = io.StringIO()
    cfg = alembic_config(store, output=out)
    if downgrade_from is not None:
        _run(command.downgrade, cfg, f"{downgrade_from}:{revision}", sql=True)
    else:
        _run(command.upgrade, cfg, revision, sql=True)
    return out.getvalue()
