"""`flask --app chatsite cleanup`: remove what a crash half-way through a delete left.

A delete removes the records first and the transcripts second, so a crash in between
leaves transcripts that no record lists. This finds and removes them; it is idempotent
and safe while the site runs: each user's files are compared with the records under a
lock that keeps chats from being created or deleted meanwhile (a new chat's file is
renamed into place inside the transaction that inserts its record).
"""

import logging
from dataclasses import dataclass

import peewee

from .database import db, write_transaction
from .search_index import IndexedTranscripts
from .tables import Chat, ChatTranscript, User
from .transcripts import FileTranscriptStore, TranscriptStore

log = logging.getLogger(__name__)


@dataclass
class Cleaned:
    """What one cleanup removed."""

    files: int = 0  # chat files with no record
    folders: int = 0  # empty folders of users with no record
    rows: int = 0  # transcript rows with no record
    temp_files: int = 0  # temp files of writes that never finished


def chats_locked() -> None:
    """Inside a write transaction: no chat is created or deleted until it ends.

    SQLite's write transaction holds the database's one write lock already; PostgreSQL
    takes a SHARE lock on the table (reads go on; writers wait, and are waited for).
    """
    if isinstance(db.obj, peewee.PostgresqlDatabase):
        db.execute_sql(f'LOCK TABLE "{Chat._meta.table_name}" IN SHARE MODE')


def clean_up(store: TranscriptStore) -> Cleaned:
    """Remove every transcript no chat record lists, in either store."""
    cleaned = Cleaned()
    with write_transaction():
        cleaned.rows = (
            ChatTranscript.delete()
            .where(ChatTranscript.chat.not_in(Chat.select(Chat.id)))
            .execute()
        )
    if isinstance(store, IndexedTranscripts):
        store = store.inner  # the files are the store's own (the index goes with records)
    if isinstance(store, FileTranscriptStore):
        cleaned.temp_files = store.clean_stray_temp_files()
        for user_id in store.user_ids():
            cleaned.files += _clean_user_files(store, user_id)
            if not User.select().where(User.uuid == user_id).exists():
                cleaned.folders += store.remove_folder_if_empty(user_id)
    log.info("cleanup removed %s", cleaned)
    return cleaned


def _clean_user_files(store: FileTranscriptStore, user_id: str) -> int:
    """Remove the user's chat files that no record lists; return how many."""
    with write_transaction():
        chats_locked()
        records = Chat.select(Chat.id).where(Chat.owner == user_id).tuples()
        listed = {str(chat_id) for (chat_id,) in records}
        orphans = [chat_id for chat_id in store.chat_ids(user_id) if chat_id not in listed]
        for chat_id in orphans:
            store.delete(user_id, chat_id)
    return len(orphans)
