"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

# the compatibility window: fill in before committing (docs/migrations.md)
phase = "expand"  # or "contract": removes or changes what older releases use
release = "X.Y.Z"  # the release that ships this step
oldest_release = "X.Y.Z"  # oldest release that runs against the schema after it


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
