"""sections: each heading path stored once; passages reference their section

A passage used to carry its full heading path: a 56 kB heading was stored (and indexed) once
per passage. Now the (capped) path is a row of `sections` and the full-text index reads it
through the passage's `section_id`: on SQLite the FTS5 table's content is a view joining the
two, on PostgreSQL a trigger fills the tsvector column (a generated column cannot read
another table). Neither is in the models; migrations/env.py keeps them out of autogenerate.

Revision ID: aa5281072bc1
Revises: bdf50dfd8568
Create Date: 2026-11-30 18:10:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "aa5281072bc1"
down_revision = "bdf50dfd8568"
branch_labels = None
depends_on = None

MAX_SECTION_CHARS = 300  # services/chunking.py
TOKENIZE = "tokenize='porter unicode61 remove_diacritics 2'"

SQLITE_OLD_FTS = [
    f"""CREATE VIRTUAL TABLE chunks_fts USING fts5(
           heading, text, content='chunks', content_rowid='id', {TOKENIZE})""",
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
    "INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')",
]
SQLITE_FTS = [
    """CREATE VIEW chunks_fts_source AS
           SELECT c.id AS id, s.path AS heading, c.text AS text
           FROM chunks c JOIN sections s ON s.id = c.section_id""",
    f"""CREATE VIRTUAL TABLE chunks_fts USING fts5(
           heading, text, content='chunks_fts_source', content_rowid='id', {TOKENIZE})""",
    """CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
           INSERT INTO chunks_fts(rowid, heading, text)
           SELECT new.id, s.path, new.text FROM sections s WHERE s.id = new.section_id;
       END""",
    """CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
           INSERT INTO chunks_fts(chunks_fts, rowid, heading, text)
           SELECT 'delete', old.id, s.path, old.text FROM sections s WHERE s.id = old.section_id;
       END""",
    """CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
           INSERT INTO chunks_fts(chunks_fts, rowid, heading, text)
           SELECT 'delete', old.id, s.path, old.text FROM sections s WHERE s.id = old.section_id;
           INSERT INTO chunks_fts(rowid, heading, text)
           SELECT new.id, s.path, new.text FROM sections s WHERE s.id = new.section_id;
       END""",
    "INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')",
]
SQLITE_DROP_FTS = [
    "DROP TRIGGER IF EXISTS chunks_fts_insert",
    "DROP TRIGGER IF EXISTS chunks_fts_delete",
    "DROP TRIGGER IF EXISTS chunks_fts_update",
    "DROP TABLE IF EXISTS chunks_fts",
    "DROP VIEW IF EXISTS chunks_fts_source",
]
POSTGRES_FTS = [
    "ALTER TABLE chunks ADD COLUMN fts tsvector",
    """CREATE FUNCTION chunks_fts_fill() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           NEW.fts := setweight(to_tsvector('english'::regconfig, coalesce(
                          (SELECT path FROM sections WHERE id = NEW.section_id), '')), 'A')
                      || setweight(to_tsvector('english'::regconfig, NEW.text), 'B');
           RETURN NEW;
       END $$""",
    """CREATE TRIGGER chunks_fts_fill BEFORE INSERT OR UPDATE OF text, section_id ON chunks
       FOR EACH ROW EXECUTE FUNCTION chunks_fts_fill()""",
    """UPDATE chunks SET fts = setweight(to_tsvector('english'::regconfig, s.path), 'A')
                              || setweight(to_tsvector('english'::regconfig, chunks.text), 'B')
       FROM sections s WHERE s.id = chunks.section_id""",
    "CREATE INDEX ix_chunks_fts ON chunks USING gin (fts)",
]
POSTGRES_DROP_FTS = [
    "DROP INDEX IF EXISTS ix_chunks_fts",
    "DROP TRIGGER IF EXISTS chunks_fts_fill ON chunks",
    "DROP FUNCTION IF EXISTS chunks_fts_fill()",
    "ALTER TABLE chunks DROP COLUMN IF EXISTS fts",
]
POSTGRES_OLD_FTS = [
    """ALTER TABLE chunks ADD COLUMN fts tsvector GENERATED ALWAYS AS (
           setweight(to_tsvector('english'::regconfig, heading), 'A')
           || setweight(to_tsvector('english'::regconfig, text), 'B')) STORED""",
    "CREATE INDEX ix_chunks_fts ON chunks USING gin (fts)",
]


def _run(statements):
    for statement in statements:
        op.execute(statement)


def upgrade():
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _run(SQLITE_DROP_FTS)
    elif dialect == "postgresql":
        _run(["DROP INDEX IF EXISTS ix_chunks_fts", "ALTER TABLE chunks DROP COLUMN fts"])
    op.create_table(
        "sections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.String(length=36), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_sections_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sections")),
        sa.UniqueConstraint("document_id", "ordinal", name=op.f("uq_sections_document_id")),
    )
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("section_id", sa.Integer(), nullable=True))
    # Existing passages: one section per distinct heading of a document, in order of first use.
    op.execute(
        """INSERT INTO sections (document_id, ordinal, path)
           SELECT document_id,
                  ROW_NUMBER() OVER (PARTITION BY document_id ORDER BY MIN(ordinal)) - 1,
                  heading
           FROM chunks GROUP BY document_id, heading"""
    )
    op.execute(
        """UPDATE chunks SET section_id = (SELECT s.id FROM sections s
           WHERE s.document_id = chunks.document_id AND s.path = chunks.heading)"""
    )
    op.execute(
        f"""UPDATE sections SET path = substr(path, 1, {MAX_SECTION_CHARS - 1}) || '…'
            WHERE length(path) > {MAX_SECTION_CHARS}"""
    )
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.alter_column("section_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_chunks_section_id_sections"),
            "sections",
            ["section_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index(batch_op.f("ix_chunks_section_id"), ["section_id"], unique=False)
        batch_op.drop_column("heading")
    _run({"sqlite": SQLITE_FTS, "postgresql": POSTGRES_FTS}.get(dialect, []))


def downgrade():
    dialect = op.get_bind().dialect.name
    _run({"sqlite": SQLITE_DROP_FTS, "postgresql": POSTGRES_DROP_FTS}.get(dialect, []))
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heading", sa.Text(), nullable=False, server_default=""))
    op.execute(
        "UPDATE chunks SET heading = (SELECT path FROM sections WHERE id = chunks.section_id)"
    )
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.alter_column("heading", existing_type=sa.Text(), server_default=None)
        batch_op.drop_index(batch_op.f("ix_chunks_section_id"))
        batch_op.drop_constraint(batch_op.f("fk_chunks_section_id_sections"), type_="foreignkey")
        batch_op.drop_column("section_id")
    op.drop_table("sections")
    _run({"sqlite": SQLITE_OLD_FTS, "postgresql": POSTGRES_OLD_FTS}.get(dialect, []))
