"""documents and chunks with full-text search

The full-text index depends on the database: an external-content FTS5 table kept in sync by
triggers on SQLite, a generated tsvector column with a GIN index on PostgreSQL. Neither is in
the models; migrations/env.py keeps them out of autogenerate's comparison.

Revision ID: 90dc00e1bcba
Revises: e5b2456f5d84
Create Date: 2026-11-22 02:25:49.432368

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '90dc00e1bcba'
down_revision = 'e5b2456f5d84'
branch_labels = None
depends_on = None

SQLITE_FTS = [
    """CREATE VIRTUAL TABLE chunks_fts USING fts5(
           heading, text, content='chunks', content_rowid='id',
           tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
           INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
       END""",
    """CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
           INSERT INTO chunks_fts(chunks_fts, rowid, heading, text)
           VALUES ('delete', old.id, old.heading, old.text);
       END""",
    """CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
           INSERT INTO chunks_fts(chunks_fts, rowid, heading, text)
           VALUES ('delete', old.id, old.heading, old.text);
           INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
       END""",
]
POSTGRES_FTS = [
    """ALTER TABLE chunks ADD COLUMN fts tsvector GENERATED ALWAYS AS (
           setweight(to_tsvector('english'::regconfig, heading), 'A')
           || setweight(to_tsvector('english'::regconfig, text), 'B')) STORED""",
    "CREATE INDEX ix_chunks_fts ON chunks USING gin (fts)",
]


def upgrade():
    op.create_table('documents',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('chunk_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_documents')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_documents_content_hash'))
    )
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.create_index('ix_documents_created', ['created_at', 'id'], unique=False)

    op.create_table('chunks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('document_id', sa.String(length=36), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('heading', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_chunks_document_id_documents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chunks')),
    sa.UniqueConstraint('document_id', 'ordinal', name=op.f('uq_chunks_document_id'))
    )
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_FTS, "postgresql": POSTGRES_FTS}.get(dialect, []):
        op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS chunks_fts_{trigger}")
        op.execute("DROP TABLE IF EXISTS chunks_fts")
    op.drop_table('chunks')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index('ix_documents_created')

    op.drop_table('documents')
