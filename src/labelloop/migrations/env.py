"""Alembic environment: runs on the connection labelloop.db hands over, or on LABELLOOP_DATABASE_URL."""

from alembic import context
from sqlalchemy import create_engine

from labelloop.config import get_settings
from labelloop.models import metadata

config = context.config


def run() -> None:
    """Run migrations online on the given connection (or a fresh engine for the CLI)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(get_settings().app_database_url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
