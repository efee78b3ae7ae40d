"""Create the revocations and clock tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Table names carry the installation's prefix and live in its schema; both come
from ``revstore db`` through the Alembic config attributes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

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


def upgrade() -> None:
    prefix, schema = _names()
    op.create_table(
        f"{prefix}revocations",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("header", sa.String(255), nullable=False, server_default=""),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("terminate", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("signal", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("revoked_by", sa.String(255), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.PrimaryKeyConstraint("kind", "header", "value", name=f"{prefix}revocations_pk"),
        schema=schema,
    )
    op.create_index(f"{prefix}revocations_version_ix", f"{prefix}revocations", ["version"], schema=schema)
    op.create_index(f"{prefix}revocations_expires_ix", f"{prefix}revocations", ["expires_at"], schema=schema)
    clock = op.create_table(
        f"{prefix}clock",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("purged_version", sa.BigInteger(), nullable=False),
        schema=schema,
    )
    op.bulk_insert(clock, [{"id": 1, "version": 0, "purged_version": 0}])


def downgrade() -> None:
    prefix, schema = _names()
    op.drop_table(f"{prefix}clock", schema=schema)
    op.drop_index(f"{prefix}revocations_expires_ix", f"{prefix}revocations", schema=schema)
    op.drop_index(f"{prefix}revocations_version_ix", f"{prefix}revocations", schema=schema)
    op.drop_table(f"{prefix}revocations", schema=schema)
