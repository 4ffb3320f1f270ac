"""tasks: due_date, priority and completed_at

Upgrades an existing database in place: every task keeps its number and fields, gets
priority "normal" and no due date; tasks already completed take their last update as the
moment they were completed (the closest thing the old schema recorded).

Revision ID: bdce96c7517a
Revises: 3a7e51c0d2f4
Create Date: 2026-11-30 17:55:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'bdce96c7517a'
down_revision = '3a7e51c0d2f4'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('due_date', sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column('priority', sa.String(length=8), server_default='normal', nullable=False)
        )
        batch_op.add_column(sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_tasks_user_due', ['user_id', 'due_date'], unique=False)
    op.execute("UPDATE tasks SET completed_at = updated_at WHERE completed")


def downgrade():
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_user_due')
        batch_op.drop_column('completed_at')
        batch_op.drop_column('priority')
        batch_op.drop_column('due_date')
