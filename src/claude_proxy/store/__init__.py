"""The request log store: engine, schema, migrations, the batching writer and queries.

SQLite (the embedded default) and PostgreSQL (production, Supabase) share one
code path; only what SQL cannot express portably branches on the dialect.
"""
