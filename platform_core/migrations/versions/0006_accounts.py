"""accounts: every API token expires; disabled users' tokens revoked

Revision ID: 0006_accounts
Revises: 0005_apps
Create Date: 2026-12-07

``api_tokens.expires_at`` is new and required. Tokens that exist at the upgrade get 30 days
from the upgrade (the default login-token lifetime), so nobody is locked out by it. Disabling
a user now revokes their tokens (enabling them again revives none): the tokens of users
disabled before the upgrade are revoked here, so those too stay dead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from platform_core.db import UTCDateTime

revision = "0006_accounts"
down_revision = "0005_apps"
branch_labels = None
depends_on = None

EXISTING_TOKENS_LIFETIME = timedelta(days=30)


def upgrade() -> None:
    now = datetime.now(UTC)
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
    tokens = sa.table(
        "api_tokens",
        sa.column("user_id", sa.Integer()),
        sa.column("revoked_at", UTCDateTime()),
        sa.column("expires_at", UTCDateTime()),
    )
    users = sa.table("users", sa.column("id", sa.Integer()), sa.column("disabled", sa.Boolean()))
    op.execute(tokens.update().values(expires_at=now + EXISTING_TOKENS_LIFETIME))
    disabled = sa.select(users.c.id).where(users.c.disabled.is_(True))
    op.execute(
        tokens.update()
        .where(tokens.c.revoked_at.is_(None), tokens.c.user_id.in_(disabled))
        .values(revoked_at=now)
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("expires_at", existing_type=UTCDateTime(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("expires_at")
