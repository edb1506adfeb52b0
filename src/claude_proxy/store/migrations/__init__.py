"""Alembic migrations for the store, packaged so an installed wheel can migrate itself."""
