"""models: model registry, deployments, ports of placements

Revision ID: 0003_models
Revises: 0002_node_layer
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from platform_core.db import UTCDateTime

revision = "0003_models"
down_revision = "0002_node_layer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("placements") as batch:
        batch.add_column(sa.Column("ports", sa.Text(), nullable=False, server_default="{}"))
    op.create_table(
        "models",
        sa.Column("model_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_models_owner", "models", ["owner"])
    op.create_table(
        "model_versions",
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.model_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("artifact_key", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("uploaded_by", sa.String(64), nullable=False),
        sa.Column("uploaded_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("deployment_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("stages", sa.Text(), nullable=False),
        sa.Column("replicas", sa.Text(), nullable=False),
        sa.Column("endpoints", sa.Text(), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("bundle_key", sa.String(255), nullable=True),
        sa.Column("bundle_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_deployments_model_id", "deployments", ["model_id"])
    op.create_index("ix_deployments_name", "deployments", ["name"])


def downgrade() -> None:
    op.drop_index("ix_deployments_name", table_name="deployments")
    op.drop_index("ix_deployments_model_id", table_name="deployments")
    op.drop_table("deployments")
    op.drop_table("model_versions")
    op.drop_index("ix_models_owner", table_name="models")
    op.drop_table("models")
    with op.batch_alter_table("placements") as batch:
        batch.drop_column("ports")
