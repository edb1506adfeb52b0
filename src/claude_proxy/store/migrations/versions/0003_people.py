"""People: users, groups, memberships, the organisation's policy, key owners, the audit
log, sign-in's device grants and budget alerts; request_logs.user_id and group_id.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"


def _limits() -> list[sa.Column[object]]:
    return [
        sa.Column("models", sa.Text()),
        sa.Column("rpm", sa.Integer()),
        sa.Column("tpm", sa.BigInteger()),
        sa.Column("budget_usd", sa.Numeric(18, 8)),
        sa.Column("budget_period", sa.Text()),
    ]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    now = sa.text(SQLITE_NOW) if sqlite else sa.text("now()")
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("request_logs") as batch:
        batch.add_column(sa.Column("user_id", sa.Text()))
        batch.add_column(sa.Column("group_id", sa.Text()))
    op.create_index("ix_request_logs_user_id_created_at", "request_logs", ["user_id", "created_at"])
    op.create_index(
        "ix_request_logs_group_id_created_at", "request_logs", ["group_id", "created_at"]
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("user_id", sa.Text()))
        batch.add_column(sa.Column("group_id", sa.Text()))
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_index("ix_api_keys_group_id", "api_keys", ["group_id"])
    op.create_table(
        "users",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("email", sa.Text(), nullable=False, unique=True),
        sa.Column("name", sa.Text()),
        sa.Column("subject", sa.Text(), unique=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="active"),
        sa.Column("status_reason", sa.Text()),
        sa.Column("source", sa.Text(), nullable=False, server_default="local"),
        sa.Column("idp_groups", sa.Text()),
        *_limits(),
        sa.Column("tokens_valid_after", ts),
        sa.Column("last_login_at", ts),
        sa.Column("created_at", ts, nullable=False, server_default=now),
        sa.Column("updated_at", ts, nullable=False, server_default=now),
    )
    op.create_index("ix_users_updated_at", "users", ["updated_at"])
    op.create_table(
        "groups",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False, unique=True),
        sa.Column("description", sa.Text()),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("100")),
        *_limits(),
        sa.Column("member_budget_usd", sa.Numeric(18, 8)),
        sa.Column("created_at", ts, nullable=False, server_default=now),
        sa.Column("updated_at", ts, nullable=False, server_default=now),
    )
    op.create_table(
        "user_groups",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("group_id", sa.Text(), primary_key=True),
        sa.Column("created_at", ts, nullable=False, server_default=now),
    )
    op.create_index("ix_user_groups_group_id", "user_groups", ["group_id"])
    op.create_table(
        "org_policy",
        sa.Column("id", sa.Text(), primary_key=True),
        *_limits(),
        sa.Column("member_budget_usd", sa.Numeric(18, 8)),
        sa.Column("updated_at", ts, nullable=False, server_default=now),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("created_at", ts, nullable=False, server_default=now),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target_type", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text()),
        sa.Column("before", sa.Text()),
        sa.Column("after", sa.Text()),
        sa.Column("reason", sa.Text()),
    )
    op.create_index("ix_audit_log_created_at", "audit_log", ["created_at"])
    op.create_index("ix_audit_log_target", "audit_log", ["target_type", "target_id"])
    op.create_table(
        "device_grants",
        sa.Column("device_code_hash", sa.Text(), primary_key=True),
        sa.Column("user_code", sa.Text(), nullable=False, unique=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("created_at", ts, nullable=False, server_default=now),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("last_poll_at", ts),
        sa.Column("user_id", sa.Text()),
        sa.Column("sealed_refresh", sa.Text()),
    )
    op.create_index("ix_device_grants_expires_at", "device_grants", ["expires_at"])
    op.create_table(
        "budget_alerts",
        sa.Column("level_id", sa.Text(), primary_key=True),
        sa.Column("period", sa.Text(), primary_key=True),
        sa.Column("threshold", sa.Integer(), primary_key=True),
        sa.Column("claimed_at", ts, nullable=False),
        sa.Column("claimed_by", sa.Text(), nullable=False),
        sa.Column("sent_at", ts),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    for table in (
        "budget_alerts",
        "device_grants",
        "audit_log",
        "org_policy",
        "user_groups",
        "groups",
        "users",
    ):
        op.drop_table(table)
    op.drop_index("ix_api_keys_group_id", "api_keys")
    op.drop_index("ix_api_keys_user_id", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("group_id")
        batch.drop_column("user_id")
    op.drop_index("ix_request_logs_group_id_created_at", "request_logs")
    op.drop_index("ix_request_logs_user_id_created_at", "request_logs")
    with op.batch_alter_table("request_logs") as batch:
        batch.drop_column("group_id")
        batch.drop_column("user_id")
