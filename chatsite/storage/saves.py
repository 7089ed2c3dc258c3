"""Saving a finished exchange to its chat, exactly once, even while the database is away.

A save that the database cannot take (down, unreachable, locked past the wait, out of
pooled connections) is kept in the host's journal instead, and the replayer writes it later.
A save of a chat that still has journaled saves waiting goes into the journal behind them,
so a chat's saves land in the order they were accepted. Any other failure (the chat is
gone, the disk is full) is not a blink: it is raised, as before.
"""

import logging
from enum import Enum

import peewee
from playhouse.pool import MaxConnectionsExceeded

from .chats import save_chat
from .database import database_connection
from .journal import Entry, Journal
from .replay import Replayer
from .tables import stored_now
from .transcripts import TranscriptStore

log = logging.getLogger(__name__)

# What a database that is away raises (errors.py answers them with a 503).
DATABASE_AWAY = (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded)


class Saved(Enum):
    """How a save ended: in the chat now, or kept in the journal for the replayer."""

    DONE = "done"
    PENDING = "pending"


class ChatSaves:
    """Save exchanges to chats, through the journal when the database is away."""

    def __init__(self, transcripts: TranscriptStore, journal: Journal) -> None:
        self.transcripts = transcripts
        self.journal = journal
        self.replayer = Replayer(journal, self.replay)

    def save(self, user_id: str, chat_id: str, messages: list[dict]) -> Saved:
        """Save the chat's new messages now, or journal them (OSError if even that fails)."""
        entry = Entry(user_id, chat_id, stored_now(), messages)
        if not self.journal.has_pending(chat_id):  # inline: the folder is empty but in outages
            try:
                self._write(entry)
                return Saved.DONE
            except DATABASE_AWAY as error:
                log.warning(
                    "chat %s could not be saved (%s: %s): journaled for replay",
                    chat_id,
                    type(error).__name__,
                    error,
                )
        else:
            log.info("chat %s has journaled saves waiting: journaled behind them", chat_id)
        self.journal.add(entry)
        self.replayer.start()
        self.replayer.wake()
        return Saved.PENDING

    def checkpoint(self, user_id: str, chat_id: str, messages: list[dict]) -> bool:
        """Save an answer in progress now, or not at all; return whether it was saved.

        Never journaled: only the answer's last save must land, and a checkpoint must not
        pass journaled saves of the chat (it is skipped while they wait). Not durable
        either (no fsync, not indexed for search): it must outlive a killed worker, and
        the answer's last save, durable and indexed, follows it.
        """
        if self.journal.has_pending(chat_id):
            return False
        try:
            self._write(Entry(user_id, chat_id, stored_now(), messages), durable=False)
        except DATABASE_AWAY as error:
            log.info("checkpoint of chat %s skipped: %s", chat_id, type(error).__name__)
            return False
        return True

    def replay(self, entry: Entry) -> None:
        """Write a journaled save, unless the chat was saved at or after its acceptance."""
        if not self._write(entry, replayed=True):
            log.info(
                "journaled save of chat %s was already in the chat, or superseded", entry.chat_id
            )

    def _write(self, entry: Entry, replayed: bool = False, durable: bool = True) -> bool:
        """Save with a short-lived connection: none is held while streaming."""
        with database_connection():
            return save_chat(
                self.transcripts,
                entry.user_id,
                entry.chat_id,
                entry.messages,
                entry.accepted,
                replayed,
                durable,
            )
