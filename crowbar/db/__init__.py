"""Database: SQLAlchemy models, engine set-up, and Alembic migrations that own the schema."""
