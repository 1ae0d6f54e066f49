"""initial registry: plugin versions, targets, revisions, releases

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26 12:36:54.660059
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "plugin_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plugin_id", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("distribution", sa.String(), nullable=False),
        sa.Column("entry_point", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("location", sa.String(), nullable=False),
        sa.Column("hashes", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("plugin_id", "version", "source"),
    )
    with op.batch_alter_table("plugin_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_plugin_versions_plugin_id"), ["plugin_id"], unique=False
        )

    op.create_table(
        "releases",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("plugin_id", sa.String(), nullable=False),
        sa.Column("plugin_version", sa.String(), nullable=False),
        sa.Column("artifact", sa.String(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("retryable", sa.Boolean(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("target", "idempotency_key"),
    )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_releases_started_at"), ["started_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_releases_status"), ["status"], unique=False)
        batch_op.create_index(
            "ix_releases_target_started_at", ["target", "started_at"], unique=False
        )

    op.create_table(
        "target_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("target", "revision"),
    )
    with op.batch_alter_table("target_revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_target_revisions_target"), ["target"], unique=False)

    op.create_table(
        "targets",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("plugin_id", sa.String(), nullable=False),
        sa.Column("plugin_version", sa.String(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:

    op.drop_table("targets")
    with op.batch_alter_table("target_revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_target_revisions_target"))

    op.drop_table("target_revisions")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index("ix_releases_target_started_at")
        batch_op.drop_index(batch_op.f("ix_releases_status"))
        batch_op.drop_index(batch_op.f("ix_releases_started_at"))

    op.drop_table("releases")
    with op.batch_alter_table("plugin_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_versions_plugin_id"))

    op.drop_table("plugin_versions")
