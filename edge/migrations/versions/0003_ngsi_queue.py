"""the NGSI-LD exporter's retry queue (edge/app/ngsi_queue.py)

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-14 10:00:00

One row per entity a context broker has not taken yet (its newest state), oldest first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ngsi_queue",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("entity_id", sa.String(length=300), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("queued_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("entity_id"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("ngsi_queue")
