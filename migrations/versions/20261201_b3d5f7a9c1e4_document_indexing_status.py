"""a large document is indexed in the background: its status and the indexing worker's lease

Revision ID: b3d5f7a9c1e4
Revises: f8b2d3e4a5c6
Create Date: 2026-12-01 00:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'b3d5f7a9c1e4'
down_revision = 'f8b2d3e4a5c6'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMNs: every stored document is already indexed (`ready`).
    op.add_column('documents', sa.Column('status', sa.String(length=16), nullable=False,
                                         server_default='ready'))
    op.add_column('documents', sa.Column('lease_until', sa.DateTime(timezone=True),
                                         nullable=True))


def downgrade():
    op.drop_column('documents', 'lease_until')
    op.drop_column('documents', 'status')
