"""Alembic environment: runs on the connection the daemon hands in (no ini file)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import edge.outbox
import edge.records

_ = edge.outbox
target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    from edge.records import make_engine

    url = context.config.get_main_option("sqlalchemy.url") or "sqlite:///var/edge.db"
    with make_engine(url).connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
