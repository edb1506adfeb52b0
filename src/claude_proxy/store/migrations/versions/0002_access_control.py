"""Access control: api_keys, key_spend, rate_usage, proxy_instances; request_logs.refusal.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    now = sa.text(SQLITE_NOW) if sqlite else sa.text("now()")
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("request_logs") as batch:
        batch.add_column(sa.Column("refusal", sa.Text()))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False, unique=True),
        sa.Column("models", sa.Text()),
        sa.Column("rpm", sa.Integer()),
        sa.Column("tpm", sa.BigInteger()),
        sa.Column("budget_usd", sa.Numeric(18, 8)),
        sa.Column("budget_period", sa.Text()),
        sa.Column("created_at", ts, nullable=False, server_default=now),
        sa.Column("updated_at", ts, nullable=False, server_default=now),
        sa.Column("expires_at", ts),
        sa.Column("revoked_at", ts),
    )
    op.create_index("ix_api_keys_updated_at", "api_keys", ["updated_at"])
    op.create_table(
        "key_spend",
        sa.Column("key_id", sa.Text(), primary_key=True),
        sa.Column("period", sa.Text(), primary_key=True),
        sa.Column("cost_usd", sa.Numeric(18, 8), nullable=False, server_default=sa.text("0")),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_key_spend_period", "key_spend", ["period"])
    op.create_table(
        "rate_usage",
        sa.Column("instance_id", sa.Text(), primary_key=True),
        sa.Column("key_id", sa.Text(), primary_key=True),
        sa.Column("bucket", sa.BigInteger(), primary_key=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_rate_usage_bucket", "rate_usage", ["bucket"])
    op.create_table(
        "proxy_instances",
        sa.Column("instance_id", sa.Text(), primary_key=True),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("last_seen", ts, nullable=False),
    )


def downgrade() -> None:
    for table in ("proxy_instances", "rate_usage", "key_spend", "api_keys"):
        op.drop_table(table)
    with op.batch_alter_table("request_logs") as batch:
        batch.drop_column("refusal")
