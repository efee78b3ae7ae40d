"""Record the compatibility window in the database: <prefix>schema_info.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

An expand step: a new table nothing older reads, so 0.1.0 workers keep
running (and keep starting: their version table stays at 0001).  The row
itself is written after every step by ``revstore.migrate.record_step``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

phase = "expand"
release = "0.2.0"
oldest_release = "0.1.0"


def upgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    op.create_table(
        tables.schema_info.name,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("schema_release", sa.String(32), nullable=False),
        sa.Column("oldest_release", sa.String(32), nullable=False),
        schema=tables.schema,
    )


def downgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    op.drop_table(tables.schema_info.name, schema=tables.schema)
