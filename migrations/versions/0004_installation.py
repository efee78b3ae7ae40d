"""Know which database it is: an installation id, and when workers last found the table rewound.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

An expand step: three nullable columns nothing older reads (0.1.0 and the
0.2.0 code before it select their columns by name).

* ``<prefix>schema_info.installation_id``: written once, by this step
  (``revstore.migrate.record_step``), and kept by every later one.  A
  database dropped and re-created at the same URL gets a new one, so a
  worker's local snapshot and its marker are not trusted there.
* ``<prefix>clock.rewound_at`` / ``rewound_note``: the last time a worker
  found the database changed under it (another installation, a failover, a
  clock behind its marker: see ``revstore.identity``), for ``revstore stats``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

phase = "expand"
release = "0.2.0"
oldest_release = "0.1.0"

#: as revstore.schema.TIMESTAMP
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    op.add_column(tables.schema_info.name, sa.Column("installation_id", sa.String(32), nullable=True),
                  schema=tables.schema)
    op.add_column(tables.clock.name, sa.Column("rewound_at", TIMESTAMP, nullable=True), schema=tables.schema)
    op.add_column(tables.clock.name, sa.Column("rewound_note", sa.String(255), nullable=True), schema=tables.schema)


def downgrade() -> None:
    tables = context.config.attributes["revstore_tables"]
    op.drop_column(tables.clock.name, "rewound_note", schema=tables.schema)
    op.drop_column(tables.clock.name, "rewound_at", schema=tables.schema)
    op.drop_column(tables.schema_info.name, "installation_id", schema=tables.schema)
