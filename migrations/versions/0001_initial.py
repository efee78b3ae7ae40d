"""Create the revocations and clock tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Table names carry the installation's prefix and live in its schema; both come
from ``revstore db`` through the Alembic config attributes.

On MySQL and MariaDB (no installation predates their support, so this first
revision may differ there): InnoDB, utf8mb4 with a binary NO PAD collation so
keys compare exactly (``ABC`` and ``abc``, ``a`` and ``a `` are distinct
rows), and microsecond DATETIMEs holding UTC.  The three key columns make an
index of (8 + 255 + 255) x 4 = 2,072 bytes, within InnoDB's 3,072.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# the compatibility window (see revstore/window.py and docs/migrations.md)
phase = "expand"
release = "0.1.0"
oldest_release = "0.1.0"


def _names() -> tuple[str, str | None]:
    tables = context.config.attributes["revstore_tables"]
    return tables.prefix, tables.schema


#: Time columns: DATETIME holds no zone and whole seconds unless told; revstore stores UTC.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _mysql_options() -> tuple[dict[str, Any], Any]:
    """Table options and the ``revoked_at`` default for this dialect.

    The NO PAD binary collation is named differently by MariaDB (10.2+) and
    MySQL (8.0.17+); with a ``mysql://`` URL the server decides, offline
    (``db sql``) the URL's scheme does.
    """
    dialect = context.get_context().dialect
    if dialect.name not in ("mysql", "mariadb"):
        return {}, sa.func.now()
    collation = "utf8mb4_nopad_bin" if dialect.is_mariadb else "utf8mb4_0900_bin"
    options = {"engine": "InnoDB", "charset": "utf8mb4", "collate": collation}
    return {f"{dialect.name}_{k}": v for k, v in options.items()}, sa.text("CURRENT_TIMESTAMP(6)")


def upgrade() -> None:
    prefix, schema = _names()
    options, now = _mysql_options()
    op.create_table(
        f"{prefix}revocations",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("header", sa.String(255), nullable=False, server_default=""),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("terminate", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("signal", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("revoked_by", sa.String(255), nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=False, server_default=now),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.PrimaryKeyConstraint("kind", "header", "value", name=f"{prefix}revocations_pk"),
        schema=schema,
        **options,
    )
    op.create_index(f"{prefix}revocations_version_ix", f"{prefix}revocations", ["version"], schema=schema)
    op.create_index(f"{prefix}revocations_expires_ix", f"{prefix}revocations", ["expires_at"], schema=schema)
    clock = op.create_table(
        f"{prefix}clock",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("purged_version", sa.BigInteger(), nullable=False),
        schema=schema,
        **options,
    )
    op.bulk_insert(clock, [{"id": 1, "version": 0, "purged_version": 0}])


def downgrade() -> None:
    prefix, schema = _names()
    op.drop_table(f"{prefix}clock", schema=schema)
    op.drop_index(f"{prefix}revocations_expires_ix", f"{prefix}revocations", schema=schema)
    op.drop_index(f"{prefix}revocations_version_ix", f"{prefix}revocations", schema=schema)
    op.drop_table(f"{prefix}revocations", schema=schema)
