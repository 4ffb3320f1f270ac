"""a document's text is stored once: in its passages, once it is indexed

Revision ID: d7e9f1a3b5c8
Revises: b3d5f7a9c1e4
Create Date: 2026-12-01 00:50:00

"""
from alembic import op


revision = 'd7e9f1a3b5c8'
down_revision = 'b3d5f7a9c1e4'
branch_labels = None
depends_on = None


def upgrade():
    # documents.text is kept only while a document waits to be indexed (a background job that
    # is taken over starts from it); an indexed document's text lives in its passages.
    op.execute("UPDATE documents SET text = '' WHERE status = 'ready'")


def downgrade():
    """Nothing to undo: an indexed document's text is not read again, and its passages
    (which overlap) cannot give it back exactly."""
