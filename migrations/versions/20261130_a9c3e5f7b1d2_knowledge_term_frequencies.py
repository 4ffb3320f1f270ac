"""knowledge at scale (PostgreSQL): passages per lexeme, and "SHA-256" indexed as "sha256"

`ts_rank` has no inverse document frequency, so search weighs each word by the number of
passages holding it: `chunks_fts_terms` keeps that count, maintained by statement-level
triggers on `chunks` (one aggregated upsert per INSERT or DELETE statement, under a
transaction-level advisory lock so that two writers never deadlock on the shared counts).
PostgreSQL's parser reads "SHA-256" as "sha" and "-256"; the index now reads a letters-hyphen-
digits word as "SHA256 SHA 256", so that it meets "sha256" and "SHA 256". SQLite needs neither: FTS5's bm25 has inverse
document frequency and its tokenizer splits "SHA-256" into "sha" "256", which a query meets as
a phrase. Not in the models; migrations/env.py keeps `chunks_fts*` out of autogenerate.

Revision ID: a9c3e5f7b1d2
Revises: e7a1c2d3f4b5
Create Date: 2026-11-30 21:30:00

"""

from alembic import op


# revision identifiers, used by Alembic.
revision = "a9c3e5f7b1d2"
down_revision = "e7a1c2d3f4b5"
branch_labels = None
depends_on = None

LOCK = "PERFORM pg_advisory_xact_lock(hashtext('chunks_fts_terms'));"
# Each lexeme's passages, and under the empty lexeme (which no text yields) all passages.
COUNT = """INSERT INTO chunks_fts_terms (lexeme, passages)
           SELECT lexeme, {sign}count(*) FROM {rows}, unnest(tsvector_to_array(fts)) AS lexeme
           GROUP BY lexeme UNION ALL SELECT '', {sign}count(*) FROM {rows} ORDER BY 1
           ON CONFLICT (lexeme) DO UPDATE SET passages = chunks_fts_terms.passages + EXCLUDED.passages;"""


def _fill(joined: bool) -> str:
    words = "regexp_replace({0}, '([[:alpha:]]+)-([[:digit:]]+)', '\\1\\2 \\1 \\2', 'g')"
    words = words if joined else "{0}"
    path = "coalesce((SELECT path FROM sections WHERE id = NEW.section_id), '')"
    return f"""CREATE OR REPLACE FUNCTION chunks_fts_fill() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           NEW.fts := setweight(to_tsvector('english'::regconfig, {words.format(path)}), 'A')
                      || setweight(to_tsvector('english'::regconfig, {words.format("NEW.text")}), 'B');
           RETURN NEW;
       END $$"""


POSTGRES = [
    _fill(joined=True),
    # Existing passages with a letter-hyphen-digit pair are indexed again (the fill trigger
    # runs on an update of their text), before anything counts.
    "UPDATE chunks SET text = text WHERE text ~ '[[:alpha:]]-[[:digit:]]'",
    "CREATE TABLE chunks_fts_terms (lexeme text PRIMARY KEY, passages integer NOT NULL)",
    """INSERT INTO chunks_fts_terms (lexeme, passages)
       SELECT lexeme, count(*) FROM chunks, unnest(tsvector_to_array(fts)) AS lexeme
       GROUP BY lexeme UNION ALL SELECT '', count(*) FROM chunks""",
    f"""CREATE FUNCTION chunks_fts_terms_added() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN {LOCK} {COUNT.format(sign="", rows="added")} RETURN NULL; END $$""",
    f"""CREATE FUNCTION chunks_fts_terms_removed() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN {LOCK} {COUNT.format(sign="-", rows="removed")} RETURN NULL; END $$""",
    f"""CREATE FUNCTION chunks_fts_terms_changed() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN {LOCK} {COUNT.format(sign="-", rows="removed")} {COUNT.format(sign="", rows="added")}
       RETURN NULL; END $$""",
    """CREATE TRIGGER chunks_fts_terms_insert AFTER INSERT ON chunks
       REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION chunks_fts_terms_added()""",
    """CREATE TRIGGER chunks_fts_terms_delete AFTER DELETE ON chunks
       REFERENCING OLD TABLE AS removed FOR EACH STATEMENT
       EXECUTE FUNCTION chunks_fts_terms_removed()""",
    """CREATE TRIGGER chunks_fts_terms_update AFTER UPDATE ON chunks
       REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT
       EXECUTE FUNCTION chunks_fts_terms_changed()""",
]
POSTGRES_DOWN = [
    "DROP TRIGGER IF EXISTS chunks_fts_terms_insert ON chunks",
    "DROP TRIGGER IF EXISTS chunks_fts_terms_delete ON chunks",
    "DROP TRIGGER IF EXISTS chunks_fts_terms_update ON chunks",
    "DROP FUNCTION IF EXISTS chunks_fts_terms_added()",
    "DROP FUNCTION IF EXISTS chunks_fts_terms_removed()",
    "DROP FUNCTION IF EXISTS chunks_fts_terms_changed()",
    "DROP TABLE IF EXISTS chunks_fts_terms",
    _fill(joined=False),
    "UPDATE chunks SET text = text WHERE text ~ '[[:alpha:]]-[[:digit:]]'",
]


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRES:
            op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRES_DOWN:
            op.execute(statement)
