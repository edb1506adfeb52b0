"""Alembic environment, driven only from code (`claude_proxy.store.migrate`).

There is no alembic.ini: the caller opens the connection (and, on PostgreSQL,
the transaction holding the migration lock) and passes it in `attributes`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from claude_proxy.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through claude_proxy.store.migrate, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
