"""isolation per target, store requirement per plugin version, plugin output per release

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("isolation", sa.String(), server_default="process", nullable=False)
        )
    with op.batch_alter_table("plugin_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requirement", sa.String(), nullable=True))
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("output", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("output")
    with op.batch_alter_table("plugin_versions", schema=None) as batch_op:
        batch_op.drop_column("requirement")
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.drop_column("isolation")
