"""The full-text index of chats, in the database chatsite already has (no extra service).

One row per chat in `chat_search_docs`: its owner, the tokens of its name and the tokens of
its messages' text (`storage.words`: folded, each token once). SQLite searches it through an
FTS5 table over those rows (kept in step by triggers); PostgreSQL keeps the tokens as
`tsvector`s under a GIN index. Either way a row goes with its chat (`ON DELETE CASCADE`),
and `IndexedTranscripts` rewrites it with every durable save of a transcript (not an
answer's checkpoint), inside the save's own transaction, whichever transcript store holds
the messages.
"""

import contextlib
import datetime
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .database import database_connection, db
from .search_schema import is_sqlite
from .tables import Chat
from .transcripts import StagedTranscript, StagedWrites, TranscriptMissing, TranscriptStore
from .words import Term, tokens

log = logging.getLogger(__name__)

MAX_INDEXED_TOKENS = 20_000  # distinct tokens kept per chat (its earliest ones)
MAX_INDEXED_CHARS = 400_000  # and their characters in all (PostgreSQL's tsvector: < 1 MB)


def distinct_tokens(texts: Iterable[str]) -> list[str]:
    """Each token of the texts once, in order of first use, within the per-chat bounds."""
    kept: dict[str, None] = {}
    chars = 0
    for text in texts:
        for token in tokens(text):
            if token in kept:
                continue
            chars += len(token) + 1
            if len(kept) >= MAX_INDEXED_TOKENS or chars > MAX_INDEXED_CHARS:
                return list(kept)
            kept[token] = None
    return list(kept)


def message_texts(messages: list[dict]) -> Iterator[str]:
    """What search reads of a transcript: the text of each message (not tool arguments,
    thinking or images)."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield content


def _store(chat_id: str, owner: str, name: list[str], words: list[str]) -> None:
    """Insert or replace a chat's row."""
    if is_sqlite():
        db.execute_sql(
            "INSERT INTO chat_search_docs (chat_id, owner, name, words) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (chat_id) DO UPDATE SET name = excluded.name, words = excluded.words",
            (chat_id, owner, " ".join(name), " ".join(words)),
        )
    else:
        db.execute_sql(
            "INSERT INTO chat_search_docs (chat_id, owner, name, words, document) "
            "SELECT %s, %s, n, w, array_to_tsvector(ARRAY[%s]) || n || w FROM "
            "(SELECT array_to_tsvector(%s::text[]) AS n, array_to_tsvector(%s::text[]) AS w) t "
            "ON CONFLICT (chat_id) DO UPDATE SET name = EXCLUDED.name, words = EXCLUDED.words, "
            "document = EXCLUDED.document",
            (chat_id, owner, owner_lexeme(owner), name, words),
        )


def index_chat(chat_id: str, words: list[str]) -> None:
    """Index a chat's name (read from its record) and the given tokens of its messages.

    A transcript with no chat record (none yet, or deleted) is not indexed.
    """
    row = Chat.select(Chat.owner, Chat.name).where(Chat.id == chat_id).tuples().first()
    if row is None:
        return
    owner, name = row
    _store(chat_id, owner, distinct_tokens([name]), words)


def index_name(chat_id: str, name: str) -> None:
    """Index a chat's new name (call it where a chat is renamed, in the same transaction)."""
    tokens_of_name = distinct_tokens([name])
    if is_sqlite():
        db.execute_sql(
            "UPDATE chat_search_docs SET name = ? WHERE chat_id = ?",
            (" ".join(tokens_of_name), chat_id),
        )
    else:
        db.execute_sql(
            "UPDATE chat_search_docs SET name = n, "
            "document = array_to_tsvector(ARRAY['owner ' || owner]) || n || words "
            "FROM (SELECT array_to_tsvector(%s::text[]) AS n) t WHERE chat_id = %s",
            (tokens_of_name, chat_id),
        )


def drop_from_index(chat_id: str) -> None:
    """Remove a chat's row (call it where the chat's record is deleted, in that transaction).

    The row would also go with the record (ON DELETE CASCADE): this makes it explicit.
    """
    param = "?" if is_sqlite() else "%s"
    db.execute_sql(f"DELETE FROM chat_search_docs WHERE chat_id = {param}", (chat_id,))


def drop_owner_from_index(user_id: str) -> None:
    """Remove the rows of all a user's chats (deleting an account)."""
    param = "?" if is_sqlite() else "%s"
    db.execute_sql(f"DELETE FROM chat_search_docs WHERE owner = {param}", (user_id,))


def owner_lexeme(user_id: str) -> str:
    """PostgreSQL: the lexeme that marks a user's rows in `document` (no word has a space;
    `index_name` writes it in SQL too)."""
    return f"owner {user_id}"


def _tsquery_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _fts_string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def find(user_id: str, terms: list[Term], limit: int) -> list[tuple]:
    """The user's chats holding every term, newest first by last update:
    [(id, name, created_at, updated_at, transcript_bytes)]."""
    columns = "c.id, c.name, c.created_at, c.updated_at, c.transcript_bytes"
    order = "ORDER BY c.updated_at DESC, c.created_at DESC, c.id LIMIT"
    if is_sqlite():
        wanted = " AND ".join(_fts_string(t.text) + ("*" if t.prefix else "") for t in terms)
        query = f"owner : {_fts_string(user_id)} AND {{name words}} : ({wanted})"
        sql = (
            f"SELECT {columns} FROM chat_search s "
            "JOIN chat_search_docs d ON d.id = s.rowid JOIN chats c ON c.id = d.chat_id "
            f"WHERE chat_search MATCH ? AND c.owner_uuid = ? {order} ?"
        )
        rows = db.execute_sql(sql, (query, user_id, limit)).fetchall()
        # Raw SQL on SQLite gives the times as the text they are stored as.
        return [(i, n, _time(c), _time(u), size) for i, n, c, u, size in rows]
    # The tokens are letters, digits and marks only: quoted, they are taken as they are.
    wanted = " & ".join(
        [_tsquery_string(owner_lexeme(user_id))]
        + [_tsquery_string(t.text) + (":*" if t.prefix else "") for t in terms]
    )
    sql = (
        f"SELECT {columns} FROM chat_search_docs d JOIN chats c ON c.id = d.chat_id "
        f"WHERE d.document @@ %s::tsquery AND c.owner_uuid = %s {order} %s"
    )
    return list(db.execute_sql(sql, (wanted, user_id, limit)).fetchall())


def _time(value: str | datetime.datetime) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


@dataclass
class IndexedStage:
    """A staged transcript whose commit indexes it first, in the caller's transaction."""

    staged: StagedTranscript
    chat_id: str
    words: list[str]

    @property
    def size(self) -> int:
        return self.staged.size

    def commit(self) -> None:
        """Index, then make the transcript the chat's: a failing commit leaves neither."""
        with database_connection():
            index_chat(self.chat_id, self.words)
        self.staged.commit()


class IndexedTranscripts(StagedWrites):
    """A transcript store whose every save and delete keeps the search index in step."""

    def __init__(self, inner: TranscriptStore) -> None:
        self.inner = inner

    @contextlib.contextmanager
    def stage(
        self,
        user_id: str,
        chat_id: str,
        messages: list[dict],
        new: bool = False,
        durable: bool = True,
    ) -> Iterator[StagedTranscript]:
        """Stage the transcript and its tokens (worked out before any lock is taken).

        A stage that is not `durable` (an answer's checkpoint) is not indexed: the answer's
        final save indexes the chat, so search finds a running answer once it has ended.
        """
        if not durable:
            with self.inner.stage(user_id, chat_id, messages, new, durable) as staged:
                yield staged
            return
        words = distinct_tokens(message_texts(messages))
        with self.inner.stage(user_id, chat_id, messages, new) as staged:
            yield IndexedStage(staged, chat_id, words)

    def read(self, user_id: str, chat_id: str) -> list[dict]:
        return self.inner.read(user_id, chat_id)

    def read_many(self, user_id: str, chat_ids: list[str]) -> dict[str, list[dict]]:
        return self.inner.read_many(user_id, chat_ids)

    def size(self, user_id: str, chat_id: str) -> int:
        return self.inner.size(user_id, chat_id)

    def delete(self, user_id: str, chat_id: str) -> None:
        """Remove the transcript, and the chat's row of the index if it is still there."""
        with database_connection():
            drop_from_index(chat_id)
        self.inner.delete(user_id, chat_id)

    def delete_all(self, user_id: str) -> None:
        """Remove all the user's transcripts, and their rows of the index."""
        with database_connection():
            drop_owner_from_index(user_id)
        self.inner.delete_all(user_id)


def index_unindexed_chats(store: TranscriptStore) -> int:
    """Index every chat saved before the index existed; return how many (`init-db`)."""
    missing = db.execute_sql(
        "SELECT c.id, c.owner_uuid FROM chats c "
        "LEFT JOIN chat_search_docs d ON d.chat_id = c.id WHERE d.chat_id IS NULL"
    ).fetchall()
    count = 0
    for chat_id, user_id in missing:
        try:
            messages = store.read(user_id, chat_id)
        except (TranscriptMissing, OSError, ValueError):
            messages = []
        index_chat(chat_id, distinct_tokens(message_texts(messages)))
        count += 1
    return count
