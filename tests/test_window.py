"""The compatibility window (issue 17): the rules migrations follow and what a worker decides.

The decisions are checked on real databases (SQLite and PostgreSQL) with a
copy of the shipped migrations plus a later release's expand and contract
steps, so the contract path is exercised although 0.2.0 ships none.
"""

from __future__ import annotations

import importlib.metadata

from pathlib import Path

import pytest
from sqlalchemy import select

import revstore
from harness import LATER_RELEASE, PG_BASE, revstore as run_cli
from revstore import migrate
from revstore.errors import RevstoreError, SchemaError
from revstore.schema import version_table
from revstore.store import RevocationStore
from revstore.window import LEGACY_HEAD, release_key

ROOT = Path(__file__).resolve().parent.parent


def test_every_migration_declares_a_window_that_follows_the_rules() -> None:
    """Rules of docs/migrations.md: a test, so a new migration cannot break them unnoticed."""
    steps = migrate.chain().steps
    assert steps[0].revision == LEGACY_HEAD and steps[0].oldest_release == steps[0].release == "0.1.0"
    for before, step in zip(steps, steps[1:]):
        assert release_key(step.release) >= release_key(before.release), step
        if step.phase == "expand":  # additive: every release already in the window keeps working
            assert step.oldest_release == before.oldest_release, step
        else:  # drops support for something older, never for its own release
            assert release_key(before.oldest_release) < release_key(step.oldest_release) <= release_key(step.release)
        if step.release == before.release:  # `db upgrade` runs all of a release's expand steps in one go
            assert not (before.phase == "contract" and step.phase == "expand"), step
    assert release_key(steps[-1].release) <= release_key(revstore.__version__)
    # the installed distribution's version is the one revstore/_version.py gives pyproject.toml
    assert importlib.metadata.version("revstore") == revstore.__version__


def legacy_revision(store: RevocationStore) -> str:
    table = version_table(store.tables.legacy_version_table, store.tables.schema)
    with store.engine.connect() as conn:
        return conn.execute(select(table.c.version_num)).scalar_one()


def test_upgrade_stops_before_contract_steps_and_contract_moves_the_window(store, later_release) -> None:
    """`db upgrade` keeps every release of the window running; `db contract` ends the old ones, in that order."""
    migrate.upgrade(store)
    assert migrate.current_revision(store) == "0901"  # the expand step ran, the contract step did not
    assert legacy_revision(store) == LEGACY_HEAD  # 0.1.0 workers still start
    for release in ("0.1.0", revstore.__version__, LATER_RELEASE):
        assert migrate.check_schema(store, release).ok
    pending = migrate.assess_schema(store, LATER_RELEASE)
    assert pending.next_step == "deploy" and "then contract (`revstore db contract`" in pending.message
    with pytest.raises(RevstoreError, match="0902 is a contract step; run `revstore db contract`"):
        migrate.upgrade(store, "0902")

    migrate.contract(store)
    assert migrate.current_revision(store) == "0902"
    assert legacy_revision(store) == "0902"  # 0.1.0 now refuses: "newer than this revstore knows"
    too_old = migrate.assess_schema(store, revstore.__version__)
    assert (too_old.status, too_old.next_step) == ("package too old", "deploy")
    assert f"needs revstore {LATER_RELEASE} or later" in too_old.message
    with pytest.raises(SchemaError):
        migrate.check_schema(store, revstore.__version__)
    done = migrate.check_schema(store, LATER_RELEASE)
    assert done.next_step is None and "nothing to do" in done.message

    migrate.downgrade(store, "0901")  # the window widens again, 0.1.0's row comes back
    assert legacy_revision(store) == LEGACY_HEAD and migrate.check_schema(store, "0.1.0").ok


def test_the_shipped_package_judges_a_later_schema_by_its_window(store, later_release, monkeypatch) -> None:
    """A worker needs no newer scripts: revisions it does not know are judged by schema_info alone."""
    migrate.upgrade(store)
    monkeypatch.undo()  # back to the scripts this package ships: 0901 is unknown to it
    newer = migrate.check_schema(store, revstore.__version__)
    assert newer.next_step == "deploy" and "has no script for it" in newer.message
    with pytest.raises(SchemaError, match="does not know; run `revstore db` commands with the newer"):
        migrate.upgrade(store)


def test_the_sql_for_dbas_has_an_expand_and_a_contract_part(sqlite_url, later_release) -> None:
    store = RevocationStore(sqlite_url)
    sql = migrate.offline_sql(store)
    expand, contract = sql.split("-- revstore: contract steps")
    assert "CREATE TABLE revstore_later" in expand and "DROP TABLE revstore_later" in contract
    assert f"0901 -> 0902: run once no worker older than revstore {LATER_RELEASE} remains" in contract
    assert "INSERT INTO revstore_alembic_version (version_num) VALUES ('0902')" in contract
    since = migrate.offline_sql(store, since="0901", phase="contract")
    assert "no expand" not in since and "DROP TABLE revstore_later" in since
    assert migrate.offline_sql(store, since="0902") == (
        "-- revstore: no expand steps pending\n\n-- revstore: no contract steps pending\n\n")
    store.dispose()


def test_db_check_names_the_next_step(sqlite_url) -> None:
    """expand (on an empty or 0.1.0 database), then deploy; one line each."""
    opts = ["--url", sqlite_url]
    empty = run_cli(*opts, "db", "check")
    assert empty.code == 1 and "run `revstore db upgrade`" in empty.err
    assert run_cli(*opts, "db", "upgrade", LEGACY_HEAD).code == 0  # the schema 0.1.0 created
    behind = run_cli(*opts, "db", "check")
    steps = migrate.chain()
    assert behind.code == 1
    assert behind.err.startswith("revstore: upgrade needed: ")
    assert f"needs {steps.required.revision}; next: expand (run `revstore db upgrade`" in behind.err
    up = run_cli(*opts, "db", "upgrade")
    assert up.code == 0 and "next: deploy" in up.out
    check = run_cli(*opts, "db", "check")
    head = steps.head
    assert check.code == 0
    assert check.out.startswith(f"revstore: compatible: schema {head.revision} (revstore {head.release}) runs revstore 0.1.0")
    assert run_cli(*opts, "db", "contract").code == 0  # nothing pending: a no-op


def test_a_0_1_0_database_is_adopted_by_the_first_upgrade(pg_store) -> None:
    """0.1.0 kept Alembic's revision in alembic_version: the upgrade starts from there."""
    migrate.downgrade(pg_store, LEGACY_HEAD)
    versions = version_table(pg_store.tables.version_table, pg_store.tables.schema)
    with pg_store.engine.begin() as conn:
        versions.drop(conn)  # now exactly what 0.1.0's `db upgrade` leaves
    assert migrate.current_revision(pg_store) == LEGACY_HEAD
    with pg_store.engine.begin() as conn:  # a row as 0.1.0 writes it (this release's writes need its expand steps)
        conn.execute(pg_store.tables.revocations.insert().values(kind="task", header="", value="kept", version=1))
    migrate.upgrade(pg_store)
    assert migrate.current_revision(pg_store) == migrate.head_revision()
    assert legacy_revision(pg_store) == LEGACY_HEAD and pg_store.get("kept") is not None
    result = run_cli("--url", PG_BASE, "--schema", pg_store.tables.schema, "db", "sql", "--since", LEGACY_HEAD)
    assert result.code == 0 and "CREATE TABLE" in result.out and "revstore_schema_version" in result.out


def test_the_installation_id_is_written_once_and_kept_by_later_steps(store, later_release) -> None:
    """A database keeps its name across migrations; only a re-created one gets another (issue 21)."""
    first = store.identity().installation
    assert first and len(first) == 32
    migrate.upgrade(store)  # nothing to run: nothing changes
    assert store.identity().installation == first
    migrate.contract(store)  # the later release's expand and contract steps
    assert migrate.current_revision(store) == "0902"
    assert store.identity().installation == first
    migrate.downgrade(store, "0003")  # before the column: gone with it
    migrate.upgrade(store, "0004")
    again = store.identity().installation
    assert again and again != first
