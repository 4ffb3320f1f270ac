"""a reply keeps its context; idempotent replays are read from the stored reply

Revision ID: 3a7e51c0d2f4
Revises: 7c1d9e4a2b60
Create Date: 2026-11-30 18:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = '3a7e51c0d2f4'
down_revision = '7c1d9e4a2b60'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('messages') as batch:
        batch.add_column(sa.Column('context_messages', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('context_truncated', sa.Boolean(), nullable=True))
    with op.batch_alter_table('idempotency_records') as batch:
        batch.drop_column('response')


def downgrade():
    with op.batch_alter_table('idempotency_records') as batch:
        batch.add_column(sa.Column('response', sa.JSON(), nullable=True))
    with op.batch_alter_table('messages') as batch:
        batch.drop_column('context_truncated')
        batch.drop_column('context_messages')
