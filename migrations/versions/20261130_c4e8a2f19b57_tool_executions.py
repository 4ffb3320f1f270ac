"""tool executions, recorded with their effect (a retry never executes a tool twice)

Revision ID: c4e8a2f19b57
Revises: aa5281072bc1
Create Date: 2026-11-30 19:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'c4e8a2f19b57'
down_revision = 'aa5281072bc1'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'tool_executions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('turn_key', sa.String(length=36), nullable=False),
        sa.Column('tool', sa.String(length=64), nullable=False),
        sa.Column('arguments_hash', sa.String(length=64), nullable=False),
        sa.Column('result', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['turn_key'], ['messages.id'],
                                name=op.f('fk_tool_executions_turn_key_messages'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tool_executions')),
    )
    with op.batch_alter_table('tool_executions') as batch:
        batch.create_index(batch.f('ix_tool_executions_turn_key'), ['turn_key'], unique=False)


def downgrade():
    with op.batch_alter_table('tool_executions') as batch:
        batch.drop_index(batch.f('ix_tool_executions_turn_key'))
    op.drop_table('tool_executions')
