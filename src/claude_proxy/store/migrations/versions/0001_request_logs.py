"""Create request_logs, one row per proxied request.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


# SQLite: microseconds in the text format SQLAlchemy writes, so values compare right.
SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    now = sa.text(SQLITE_NOW) if sqlite else sa.text("now()")
    # Types are spelled out here (not imported from schema.py) so this revision
    # keeps creating the same table whatever later code looks like.
    op.create_table(
        "request_logs",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Text()),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("model", sa.Text()),
        sa.Column("stream", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error_type", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column("stop_reason", sa.Text()),
        sa.Column("message_id", sa.Text()),
        sa.Column("input_tokens", sa.BigInteger()),
        sa.Column("output_tokens", sa.BigInteger()),
        sa.Column("cache_creation_input_tokens", sa.BigInteger()),
        sa.Column("cache_creation_5m_input_tokens", sa.BigInteger()),
        sa.Column("cache_creation_1h_input_tokens", sa.BigInteger()),
        sa.Column("cache_read_input_tokens", sa.BigInteger()),
        sa.Column("cost_usd", sa.Numeric(18, 8)),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("ttft_ms", sa.Float()),
        sa.Column("upstream_request_id", sa.Text()),
        sa.Column("client_disconnected", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("upstream_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("client_ip", sa.Text()),
        sa.Column("user_agent", sa.Text()),
        sa.Column("anthropic_beta", sa.Text()),
        sa.Column("metadata_user_id", sa.Text()),
        sa.Column("claude_code_session_id", sa.Text()),
        sa.Column("request_body", sa.Text()),
        sa.Column("response_body", sa.Text()),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )
    op.create_index("ix_request_logs_created_at", "request_logs", ["created_at"])
    op.create_index("ix_request_logs_key_id_created_at", "request_logs", ["key_id", "created_at"])
    op.create_index("ix_request_logs_model_created_at", "request_logs", ["model", "created_at"])
    op.create_index("ix_request_logs_logged_at", "request_logs", ["logged_at"])


def downgrade() -> None:
    op.drop_table("request_logs")
