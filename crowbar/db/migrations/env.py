"""Alembic environment: uses the engine handed over by crowbar.db.migrate (or sqlalchemy.url)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from crowbar.db.models import Base
import crowbar.db.network_models  # noqa: F401

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                    poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
