"""ingest speed (PostgreSQL): a passage's tsvector computed by the INSERT that stores it

Ingest stores passages 500 to a statement (services/knowledge.py `_insert_passages`). The
row trigger `chunks_fts_fill` computed each passage's tsvector in PL/pgSQL: a look-up of its
section's path, that path's vector again for every passage under it, and a regular-expression
rewrite of every text ("SHA-256" → "SHA256 SHA 256", see a9c3e5f7b1d2) even when it holds no
letters-hyphen-digits pair (about 2 % of passages). The INSERT now computes the vectors itself,
set-based: each section's once, a text's rewrite only when it holds such a pair; the trigger
keeps a vector an INSERT gives and computes it otherwise (any other INSERT, and an UPDATE of
the text or the section), with the same rewrite test. The vectors are the same as before (the
rewrite of a text without such a pair is the text itself), so nothing is indexed again.

Revision ID: f2a4c6e8b0d1
Revises: c1d3e5f7a9b2
Create Date: 2026-12-01 04:00:00

"""

from alembic import op


revision = "f2a4c6e8b0d1"
down_revision = "c1d3e5f7a9b2"
branch_labels = None
depends_on = None

JOINED = "regexp_replace({0}, '([[:alpha:]]+)-([[:digit:]]+)', '\\1\\2 \\1 \\2', 'g')"
WHEN_JOINED = "CASE WHEN {0} ~ '[[:alpha:]]-[[:digit:]]' THEN " + JOINED + " ELSE {0} END"
PATH = "coalesce((SELECT path FROM sections WHERE id = NEW.section_id), '')"

FILL = f"""CREATE OR REPLACE FUNCTION chunks_fts_fill() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
       IF TG_OP = 'INSERT' AND NEW.fts IS NOT NULL THEN
           RETURN NEW;  -- computed by the INSERT (services/knowledge.py _insert_passages)
       END IF;
       NEW.fts := setweight(to_tsvector('english'::regconfig, {WHEN_JOINED.format(PATH)}), 'A')
                  || setweight(to_tsvector('english'::regconfig, {WHEN_JOINED.format("NEW.text")}), 'B');
       RETURN NEW;
   END $$"""
# a9c3e5f7b1d2's
FILL_BEFORE = f"""CREATE OR REPLACE FUNCTION chunks_fts_fill() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
       NEW.fts := setweight(to_tsvector('english'::regconfig, {JOINED.format(PATH)}), 'A')
                  || setweight(to_tsvector('english'::regconfig, {JOINED.format("NEW.text")}), 'B');
       RETURN NEW;
   END $$"""


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FILL)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FILL_BEFORE)
