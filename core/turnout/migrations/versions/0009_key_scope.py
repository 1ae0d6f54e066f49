"""idempotency keys are scoped per target and customer: two customers who use the same
low-entropy key ("42") on one target get a release each, and neither is refused because of,
or told about, the other's (RELIABILITY S7)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 00:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OLD = "uq_releases_target"
"""The unnamed (target, idempotency_key) constraint of 0001, as batch mode names it on SQLite."""
NEW = "uq_releases_key"
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("key_scope", sa.String(), nullable=False, server_default=sa.text("''"))
        )
    op.execute("UPDATE releases SET key_scope = customer WHERE customer IS NOT NULL")
    _drop_old_constraint()
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.create_unique_constraint(NEW, ["target", "key_scope", "idempotency_key"])


def downgrade() -> None:
    # Refused while two customers share a key on one target: the old constraint cannot hold.
    with op.batch_alter_table("releases", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(NEW, type_="unique")
        batch_op.create_unique_constraint(OLD, ["target", "idempotency_key"])
        batch_op.drop_column("key_scope")


def _drop_old_constraint() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # named by the server (or by a downgrade): look it up
        (name,) = [
            str(unique["name"])
            for unique in sa.inspect(bind).get_unique_constraints("releases")
            if unique["column_names"] == ["target", "idempotency_key"]
        ]
        op.drop_constraint(name, "releases", type_="unique")
        return
    with op.batch_alter_table("releases", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(OLD, type_="unique")
