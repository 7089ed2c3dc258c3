"""Deleting an account: every record of the user in one transaction, then their files.

The records go first, all at once: a crash before the files are gone leaves only files
that no record lists (`flask --app chatsite cleanup` removes them), never a user with
chats whose transcripts are missing.
"""

import logging

from .database import write_transaction
from .search_index import drop_owner_from_index
from .tables import Chat, ChatTranscript, User
from .transcripts import TranscriptStore

log = logging.getLogger(__name__)


def delete_account(store: TranscriptStore, user_id: str) -> int:
    """Delete the user's record, chats and transcripts; return how many chats went.

    A later valid token for the same uuid starts a fresh user, as any new user does.
    """
    with write_transaction():
        chats = Chat.select(Chat.id).where(Chat.owner == user_id)
        ChatTranscript.delete().where(ChatTranscript.chat.in_(chats)).execute()
        drop_owner_from_index(user_id)
        deleted = Chat.delete().where(Chat.owner == user_id).execute()
        User.delete().where(User.uuid == user_id).execute()
    store.delete_all(user_id)
    log.info("deleted account %s with %d chats", user_id, deleted)
    return deleted
