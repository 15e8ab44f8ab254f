"""SQLAlchemy models, sessions and Alembic migrations. Knows only `cxrtriage.domain`."""
