"""``revstore db …``: Alembic migrations run by an admin, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from harness import PG_BASE, assert_one_line_error, mysql_url, revstore
from revstore import migrate
from revstore.config import normalize_url
from revstore.schema import build_tables


@pytest.fixture
def db_url(backend, request) -> tuple[list[str], str]:  # type: ignore[no-untyped-def]
    """CLI options selecting an empty database, and the plain URL."""
    if backend == "sqlite":
        url = request.getfixturevalue("sqlite_url")
        return ["--url", url], url
    if backend == "mariadb":
        url = mysql_url(request.getfixturevalue("mysql_database"))
        return ["--url", url], url
    schema = request.getfixturevalue("pg_schema")
    return ["--url", PG_BASE, "--schema", schema], PG_BASE


def table_names(url: str, schema: str | None = None) -> set[str]:
    engine = create_engine(normalize_url(url))
    try:
        return set(inspect(engine).get_table_names(schema=schema))
    finally:
        engine.dispose()


def schema_of(opts: list[str]) -> str | None:
    return opts[opts.index("--schema") + 1] if "--schema" in opts else None


def test_upgrade_check_downgrade_round_trip(db_url) -> None:
    opts, url = db_url
    schema = schema_of(opts)
    check = revstore(*opts, "db", "check")
    assert check.code == 1 and "db upgrade" in check.err and "Traceback" not in check.text
    assert revstore(*opts, "db", "current").out.startswith("base")

    up = revstore(*opts, "db", "upgrade")
    assert up.code == 0, up.text
    assert {"revstore_revocations", "revstore_clock", "revstore_alembic_version"} <= table_names(url, schema)
    head = migrate.head_revision()
    assert revstore(*opts, "db", "current").out.strip() == head
    assert revstore(*opts, "db", "check").code == 0
    assert revstore(*opts, "db", "upgrade").code == 0  # idempotent

    # the table works through the CLI right after the migration
    assert revstore(*opts, "revoke", "t-1").code == 0
    assert "t-1" in revstore(*opts, "list").out

    down = revstore(*opts, "db", "downgrade", "base")
    assert down.code == 0, down.text
    assert not {t for t in table_names(url, schema) if t.startswith("revstore_")}
    assert revstore(*opts, "db", "check").code == 1


def test_schema_module_matches_the_migrations(store) -> None:
    """schema.py and migrations/versions must describe the same tables."""
    tables = build_tables(store.tables.prefix, store.tables.schema)
    with store.engine.connect() as conn:
        wanted = {t.name for t in tables.metadata.tables.values()}

        def include_name(name, type_, parent_names):  # type: ignore[no-untyped-def]
            if type_ == "schema":
                return name == tables.schema
            if type_ == "table":
                return name in wanted
            return True

        ctx = MigrationContext.configure(
            conn, opts={"include_schemas": bool(tables.schema), "include_name": include_name}
        )
        diff = compare_metadata(ctx, tables.metadata)
    assert diff == []


def test_own_version_table_coexists_with_the_apps_alembic(pg_admin_engine, pg_schema) -> None:
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{pg_schema}"'))
        conn.execute(text(f'CREATE TABLE "{pg_schema}".alembic_version (version_num varchar(32) PRIMARY KEY)'))
        conn.execute(text(f"INSERT INTO \"{pg_schema}\".alembic_version VALUES ('app_rev_42')"))
    assert revstore("--url", PG_BASE, "--schema", pg_schema, "db", "upgrade").code == 0
    assert revstore("--url", PG_BASE, "--schema", pg_schema, "db", "downgrade", "base").code == 0
    with pg_admin_engine.connect() as conn:
        assert conn.execute(text(f'SELECT version_num FROM "{pg_schema}".alembic_version')).scalar_one() == "app_rev_42"


def test_table_prefix_lets_two_installations_share_a_database(sqlite_url) -> None:
    assert revstore("--url", sqlite_url, "db", "upgrade").code == 0
    assert revstore("--url", sqlite_url, "--prefix", "other_", "db", "upgrade").code == 0
    assert revstore("--url", sqlite_url, "revoke", "only-in-default").code == 0
    assert "only-in-default" not in revstore("--url", sqlite_url, "--prefix", "other_", "list").out
    assert revstore("--url", sqlite_url, "--prefix", "other_", "db", "downgrade", "base").code == 0
    names = table_names(sqlite_url)
    assert "revstore_revocations" in names and not any(n.startswith("other_") for n in names)


@pytest.mark.parametrize("dialect", ["postgresql://postgres@db.invalid:1/x", "sqlite:///nowhere/x.db",
                                     "mysql://u@db.invalid:1/x", "mariadb://u@db.invalid:1/x"])
def test_offline_sql_needs_no_database(dialect: str) -> None:
    result = revstore("--url", dialect, "db", "sql")
    assert result.code == 0, result.text
    assert "CREATE TABLE revstore_revocations" in result.out
    if dialect.startswith(("mysql", "mariadb")):  # exact keys: a binary collation without trailing-space padding
        collation = "utf8mb4_nopad_bin" if dialect.startswith("mariadb") else "utf8mb4_0900_bin"
        assert f"ENGINE=InnoDB CHARSET=utf8mb4 COLLATE {collation}" in result.out
        assert "DATETIME(6)" in result.out
    assert "revstore_alembic_version" in result.out
    down = revstore("--url", dialect, "db", "sql", "base", "--from", "head")
    assert down.code == 0 and "DROP TABLE revstore_revocations" in down.out


def test_offline_sql_creates_the_schema_when_asked() -> None:
    result = revstore("--url", "postgresql://u:secret@db.invalid/x", "--schema", "rs", "db", "sql")
    assert 'CREATE SCHEMA IF NOT EXISTS "rs"' in result.out and "rs.revstore_revocations" in result.out
    assert "secret" not in result.text


def test_unmigrated_schema_is_one_clear_line(sqlite_url) -> None:
    assert_one_line_error(revstore("--url", sqlite_url, "list"), "revstore db upgrade")
    assert_one_line_error(revstore("--url", sqlite_url, "revoke", "x"), "revstore db upgrade")


def test_schema_newer_than_this_revstore_is_one_clear_line(pg_store) -> None:
    """A schema whose window starts after this release: workers and `db check` refuse in one line."""
    info = pg_store.tables.schema_info
    with pg_store.engine.begin() as conn:
        conn.execute(info.update().values(revision="ffffffffffff", schema_release="9.1.0", oldest_release="9.0.0"))
    result = revstore("--url", PG_BASE, "--schema", pg_store.tables.schema, "db", "check")
    assert_one_line_error(result, "package too old", "newer", "needs revstore 9.0.0 or later",
                          "upgrade the revstore package")


def test_a_migration_behind_a_long_transaction_gives_up_after_its_lock_timeout(db_url, backend) -> None:
    opts, url = db_url
    schema = schema_of(opts)
    assert revstore(*opts, "db", "upgrade", "0003").code == 0
    table = build_tables(schema=schema).schema_info
    name = f'"{schema}".{table.name}' if schema else table.name
    engine = create_engine(normalize_url(url))
    holder = engine.connect()
    try:
        if backend == "sqlite":
            holder.exec_driver_sql("BEGIN IMMEDIATE")  # the file's write lock
        else:
            holder.begin()
            if backend == "postgresql":
                holder.execute(text(f"LOCK TABLE {name} IN ACCESS SHARE MODE"))
            else:  # a metadata lock, as any open transaction that read the table holds
                holder.execute(text(f"SELECT * FROM {name}")).all()
        started = time.monotonic()
        result = revstore(*opts, "db", "upgrade", "--lock-timeout", "1")
        waited = time.monotonic() - started
        assert_one_line_error(result, "gave up", "--lock-timeout")
        assert waited < 15, waited
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    assert revstore(*opts, "db", "upgrade", "--lock-timeout", "1").code == 0
