"""the key a plugin is called with is recorded per release: the caller's key, made unique per
customer when the release has one, so that a plugin which recognises a repeat by its key
never answers one customer's release with another's (RELIABILITY S7)

Rows claimed before keep NULL: they were called with their bare key, and a resumption or a
reconciliation of one goes on with that key.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 06:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plugin_key", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("plugin_key")
