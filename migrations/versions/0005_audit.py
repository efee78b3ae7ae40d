"""Who did what: an append-only audit table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

An expand step: a new table nothing older reads or writes.  Writes made by
0.1.0 and 0.2.0 code before this release is deployed leave no audit row
(their revocations still carry ``revoked_by``).  ``<prefix>audit`` gets one
row per write operation (see ``revstore.audit``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

phase = "expand"
release = "0.2.0"
oldest_release = "0.1.0"

#: as revstore.schema.TIMESTAMP and AUDIT_ID
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
AUDIT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    name = f"{tables.prefix}audit"
    op.create_table(
        name,
        sa.Column("id", AUDIT_ID, primary_key=True, autoincrement=True),
        sa.Column("done_at", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(8), nullable=True),
        sa.Column("key_count", sa.BigInteger, nullable=False),
        sa.Column("first_keys", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        schema=tables.schema,
    )
    op.create_index(f"{name}_done_at_ix", name, ["done_at"], schema=tables.schema)


def downgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    op.drop_table(f"{tables.prefix}audit", schema=tables.schema)
