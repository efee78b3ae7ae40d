"""Keys of any length: header_full and value_full beside the indexed key columns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

An expand step: two nullable columns nothing older reads.  A key too long for
the indexed ``VARCHAR(255)`` columns (or holding NUL or a lone surrogate) is
stored under its digest there, its exact text here (``revstore.keys``).
0.1.0 workers never see these columns; to them a digest row is one more
harmless id (a stamp's digest is a JSON string, as they expect).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

phase = "expand"
release = "0.2.0"
oldest_release = "0.1.0"

#: as revstore.schema.FULL_KEY_TYPE: MySQL's TEXT stops at 64 KB
FULL = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    # nullable, no default: PostgreSQL and MySQL add them without rewriting the table
    for name in ("header_full", "value_full"):
        op.add_column(tables.revocations.name, sa.Column(name, FULL, nullable=True), schema=tables.schema)


def downgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    # Rows stored by digest stay, under their digest: harmless to the code
    # of 0002, which reads them as one more id nobody uses.
    for name in ("value_full", "header_full"):
        op.drop_column(tables.revocations.name, name, schema=tables.schema)
