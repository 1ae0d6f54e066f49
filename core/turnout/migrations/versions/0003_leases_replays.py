"""leases and fencing tokens on releases, replay links, the idempotent policy on targets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("idempotent", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token", sa.String(), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("replay_of", sa.String(), nullable=True))
        batch_op.create_index(batch_op.f("ix_releases_replay_of"), ["replay_of"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_releases_replay_of"))
        batch_op.drop_column("replay_of")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("token")
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.drop_column("idempotent")
