"""Alembic environment of the fleet database. db.upgrade() passes an open connection; the `alembic` command
line (alembic -x url=... with script_location qc_cloud.fleet:migrations) works too."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from qc_cloud.fleet.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
