"""dead-letter table, commit marks; at most one open alarm row per (device, code)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 18:00:00

Before the unique index can exist, duplicate open rows (left by restarts that re-raised
alarms already open) are closed: of each (device, code) the newest open row stays open,
the older ones are closed at the time the newest was raised.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPEN = "cleared_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letter_ts", "dead_letter", ["ts"], unique=False)
    op.create_table(
        "storage_commit",
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token"),
    )
    op.create_index("ix_storage_commit_ts", "storage_commit", ["ts"], unique=False)
    # Close duplicates first (portable SQL: SQLite and PostgreSQL both take a correlated subquery).
    op.execute(
        sa.text(
            "UPDATE alarm SET cleared_at = ("
            " SELECT MAX(a2.raised_at) FROM alarm a2"
            " WHERE a2.device_id = alarm.device_id AND a2.code = alarm.code AND a2.cleared_at IS NULL)"
            " WHERE alarm.cleared_at IS NULL AND alarm.id < ("
            " SELECT MAX(a3.id) FROM alarm a3"
            " WHERE a3.device_id = alarm.device_id AND a3.code = alarm.code AND a3.cleared_at IS NULL)"
        )
    )
    op.create_index(
        "uq_alarm_open",
        "alarm",
        ["device_id", "code"],
        unique=True,
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )


def downgrade() -> None:
    op.drop_index("uq_alarm_open", table_name="alarm")
    op.drop_index("ix_storage_commit_ts", table_name="storage_commit")
    op.drop_table("storage_commit")
    op.drop_index("ix_dead_letter_ts", table_name="dead_letter")
    op.drop_table("dead_letter")
