"""releases keep their context's customer in a column of its own, indexed: finding one
customer's releases (the dashboard's drill-down, ``--customer``) reads an index, not every row

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 22:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "ix_releases_customer_started_at"


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer", sa.String(), nullable=True))
    # The releases recorded so far: their customer, copied out of the context (JSON).
    if op.get_bind().dialect.name == "postgresql":
        customer = "context ->> 'customer'"
    else:
        customer = "json_extract(context, '$.customer')"
    op.execute(f"UPDATE releases SET customer = {customer} WHERE {customer} IS NOT NULL")  # noqa: S608
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.create_index(INDEX, ["customer", "started_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.drop_column("customer")
