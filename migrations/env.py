"""Alembic environment for revstore.

Run through ``revstore db …``, which passes the store (URL, prefix, schema)
in ``config.attributes``; the tables are described by ``revstore.schema``.
"""

from __future__ import annotations

import functools

from alembic import context
from sqlalchemy import text

from revstore.migrate import prepare_offline, prepare_online, record_step
from revstore.schema import build_tables

config = context.config
store = config.attributes["revstore_store"]
tables = build_tables(store.tables.prefix, store.tables.schema)
config.attributes["revstore_tables"] = tables

options = dict(
    target_metadata=tables.metadata,
    version_table=tables.version_table,
    version_table_schema=tables.schema,
    on_version_apply=[functools.partial(record_step, tables)],
)


def run_offline() -> None:
    context.configure(
        url=store.url.render_as_string(hide_password=True),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **options,
    )
    with context.begin_transaction():
        if tables.schema:
            context.execute(f'CREATE SCHEMA IF NOT EXISTS "{tables.schema}"')
        if "revstore_offline_from" in config.attributes:  # an upgrade, not a downgrade
            prepare_offline(context, tables, config.attributes["revstore_offline_from"])
        context.run_migrations()


def run_online() -> None:
    with store.engine.connect() as connection:
        store.backend.prepare_migrations(connection)
        if config.attributes.get("revstore_lock_timeout"):
            store.backend.limit_lock_wait(connection, config.attributes["revstore_lock_timeout"])
        if tables.schema:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{tables.schema}"'))
        prepare_online(connection, tables)
        connection.commit()
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
