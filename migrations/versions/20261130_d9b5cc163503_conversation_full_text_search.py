"""full-text search over conversations: titles and message text

SQLite: two external-content FTS5 tables keyed by the rowids of `conversations` and
`messages`, kept in sync by triggers (the rowids of those tables are implicit: do not VACUUM
the database without rebuilding them: INSERT INTO messages_fts(messages_fts) VALUES
('rebuild')). PostgreSQL: expression GIN indexes on to_tsvector('english', …), which the
search queries repeat verbatim. Neither is in the models; migrations/env.py keeps them out of
autogenerate through chatsvc.db.include_name. Existing rows are indexed by the upgrade.

Revision ID: d9b5cc163503
Revises: bdce96c7517a
Create Date: 2026-11-30 18:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'd9b5cc163503'
down_revision = 'bdce96c7517a'
branch_labels = None
depends_on = None

TOKENIZE = "tokenize='porter unicode61 remove_diacritics 2'"
SQLITE = [
    f"CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', {TOKENIZE})",
    f"CREATE VIRTUAL TABLE conversations_fts USING fts5(title, content='conversations', {TOKENIZE})",
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
           INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
       END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
           INSERT INTO messages_fts(messages_fts, rowid, content)
           VALUES ('delete', old.rowid, old.content);
       END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
           INSERT INTO messages_fts(messages_fts, rowid, content)
           VALUES ('delete', old.rowid, old.content);
           INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
       END""",
    """CREATE TRIGGER conversations_fts_insert AFTER INSERT ON conversations BEGIN
           INSERT INTO conversations_fts(rowid, title) VALUES (new.rowid, new.title);
       END""",
    """CREATE TRIGGER conversations_fts_delete AFTER DELETE ON conversations BEGIN
           INSERT INTO conversations_fts(conversations_fts, rowid, title)
           VALUES ('delete', old.rowid, old.title);
       END""",
    """CREATE TRIGGER conversations_fts_update AFTER UPDATE OF title ON conversations BEGIN
           INSERT INTO conversations_fts(conversations_fts, rowid, title)
           VALUES ('delete', old.rowid, old.title);
           INSERT INTO conversations_fts(rowid, title) VALUES (new.rowid, new.title);
       END""",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
    "INSERT INTO conversations_fts(conversations_fts) VALUES ('rebuild')",
]
POSTGRES = [
    "CREATE INDEX ix_messages_fts ON messages USING gin (to_tsvector('english'::regconfig, content))",
    "CREATE INDEX ix_conversations_fts ON conversations"
    " USING gin (to_tsvector('english'::regconfig, title))",
]


def upgrade():
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE, "postgresql": POSTGRES}.get(dialect, []):
        op.execute(statement)


def downgrade():
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in ("messages", "conversations"):
            for trigger in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_fts_{trigger}")
            op.execute(f"DROP TABLE IF EXISTS {table}_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_messages_fts")
        op.execute("DROP INDEX IF EXISTS ix_conversations_fts")
