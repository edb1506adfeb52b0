"""Hand-written Alembic revisions, applied in order by `claude_proxy.store.migrate`."""
