"""quotas: tokens per subject and UTC day, and admins' per-user caps

Revision ID: bdf50dfd8568
Revises: d9b5cc163503
Create Date: 2026-11-30 18:05:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'bdf50dfd8568'
down_revision = 'd9b5cc163503'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('quota_usage',
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('tokens', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('subject', 'day', name=op.f('pk_quota_usage'))
    )
    op.create_table('user_quotas',
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('tokens_per_day', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_user_quotas'))
    )


def downgrade():
    op.drop_table('user_quotas')
    op.drop_table('quota_usage')
