"""a running turn's reply can be asked to stop from any worker or host (cancel_requested_at)

Revision ID: f8b2d3e4a5c6
Revises: e7a1c2d3f4b5
Create Date: 2026-11-30 21:15:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'f8b2d3e4a5c6'
down_revision = 'e7a1c2d3f4b5'
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN on both databases: SQLite's table (and the full-text triggers on it)
    # is not rebuilt, as batch mode would.
    op.add_column('messages', sa.Column('cancel_requested_at', sa.DateTime(timezone=True),
                                        nullable=True))


def downgrade():
    # SQLite >= 3.35 drops a column in place: no rebuild that would lose the triggers.
    op.drop_column('messages', 'cancel_requested_at')
