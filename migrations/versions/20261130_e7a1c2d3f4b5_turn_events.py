"""turn events: the per-turn event log that streams resume from

Revision ID: e7a1c2d3f4b5
Revises: c4e8a2f19b57
Create Date: 2026-11-30 21:10:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'e7a1c2d3f4b5'
down_revision = 'c4e8a2f19b57'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'turn_events',
        sa.Column('message_id', sa.String(length=36), nullable=False),
        sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('name', sa.String(length=16), nullable=False),
        sa.Column('data', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('message_id', 'seq', name=op.f('pk_turn_events')),
    )
    with op.batch_alter_table('turn_events') as batch:
        batch.create_index('ix_turn_events_created_at', ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('turn_events') as batch:
        batch.drop_index('ix_turn_events_created_at')
    op.drop_table('turn_events')
