"""documents belong to a collection; searches may be limited to some collections

Revision ID: e8f0a2b4c6d9
Revises: d7e9f1a3b5c8
Create Date: 2026-12-01 01:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'e8f0a2b4c6d9'
down_revision = 'd7e9f1a3b5c8'
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN (no table rebuild on SQLite): every stored document is in `default`.
    op.add_column('documents', sa.Column('collection', sa.String(length=64), nullable=False,
                                         server_default='default'))
    op.create_index('ix_documents_collection', 'documents',
                    ['collection', 'created_at', 'id'], unique=False)


def downgrade():
    op.drop_index('ix_documents_collection', table_name='documents')
    op.drop_column('documents', 'collection')
