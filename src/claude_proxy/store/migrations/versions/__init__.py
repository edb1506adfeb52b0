"""Hand-written Alembic revisions, applied in order by `claude_proxy.store.migrate`.

Adding one: set `migrate.HEAD_REVISION` to its id too (the server compares the database
with it without loading Alembic; tests/store/test_migrate.py checks the two agree).
"""
