"""the dashboard's timeline reads an index alone: started_at, then what it counts releases by

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 21:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = ["started_at", "target", "plugin_id", "plugin_version", "status", "finished_at"]


def upgrade() -> None:
    # It starts with started_at, so it serves every query the index it replaces served.
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_releases_started_at"))
        batch_op.create_index("ix_releases_timeline", COLUMNS, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index("ix_releases_timeline")
        batch_op.create_index(batch_op.f("ix_releases_started_at"), ["started_at"], unique=False)
