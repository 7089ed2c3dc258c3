"""The search index's tables: FTS5 over `chat_search_docs` (SQLite), tsvectors (PostgreSQL).

Created by `create_tables` (`init-db`); what goes in them is `search_index.py`'s business.
"""

from peewee import SqliteDatabase

from .database import db

SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chat_search_docs (
        id INTEGER PRIMARY KEY,
        chat_id VARCHAR(36) NOT NULL UNIQUE REFERENCES {chats} (id) ON DELETE CASCADE,
        owner VARCHAR(36) NOT NULL,
        name TEXT NOT NULL,
        words TEXT NOT NULL)""",
    # Only the words are tokenized by FTS5 as storage.words cut them; `-` keeps a uuid whole.
    """CREATE VIRTUAL TABLE IF NOT EXISTS chat_search USING fts5(
        owner, name, words, content='chat_search_docs', content_rowid='id',
        tokenize="unicode61 remove_diacritics 0 categories 'L* N* Co M*' tokenchars '-'")""",
    """CREATE TRIGGER IF NOT EXISTS chat_search_docs_insert AFTER INSERT ON chat_search_docs
    BEGIN
        INSERT INTO chat_search (rowid, owner, name, words)
        VALUES (new.id, new.owner, new.name, new.words);
    END""",
    """CREATE TRIGGER IF NOT EXISTS chat_search_docs_delete AFTER DELETE ON chat_search_docs
    BEGIN
        INSERT INTO chat_search (chat_search, rowid, owner, name, words)
        VALUES ('delete', old.id, old.owner, old.name, old.words);
    END""",
    """CREATE TRIGGER IF NOT EXISTS chat_search_docs_update AFTER UPDATE ON chat_search_docs
    BEGIN
        INSERT INTO chat_search (chat_search, rowid, owner, name, words)
        VALUES ('delete', old.id, old.owner, old.name, old.words);
        INSERT INTO chat_search (rowid, owner, name, words)
        VALUES (new.id, new.owner, new.name, new.words);
    END""",
)

POSTGRES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chat_search_docs (
        chat_id VARCHAR(36) PRIMARY KEY REFERENCES {chats} (id) ON DELETE CASCADE,
        owner VARCHAR(36) NOT NULL,
        name TSVECTOR NOT NULL,
        words TSVECTOR NOT NULL,
        document TSVECTOR NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS chat_search_docs_owner ON chat_search_docs (owner)",
    # `document` is the owner's token, the name's and the words': one GIN lookup finds
    # one user's matching chats without reading any other row.
    """CREATE INDEX IF NOT EXISTS chat_search_docs_document
        ON chat_search_docs USING GIN (document)""",
)


def is_sqlite() -> bool:
    """Whether the bound database is SQLite (FTS5) rather than PostgreSQL."""
    return isinstance(db.obj, SqliteDatabase)


def create_search_index(chats_table: str) -> None:
    """Create the index's tables, whose rows go with those of `chats_table` (idempotent)."""
    for statement in SQLITE_SCHEMA if is_sqlite() else POSTGRES_SCHEMA:
        db.execute_sql(statement.replace("{chats}", f'"{chats_table}"'))


def drop_search_index() -> None:
    """Remove the index's tables (tests: a database from before the index)."""
    if is_sqlite():
        db.execute_sql("DROP TABLE IF EXISTS chat_search")
    db.execute_sql("DROP TABLE IF EXISTS chat_search_docs")
