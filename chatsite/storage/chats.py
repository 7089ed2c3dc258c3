"""Chats: a record per chat plus its transcript in the transcript store, kept in step."""

import contextlib
import logging
import uuid

from .database import write_transaction
from .tables import Chat, utcnow
from .transcripts import TranscriptMissing, TranscriptStore

log = logging.getLogger(__name__)

NEW_CHAT_NAME = "New chat"
MAX_NAME_CHARS = 60


class ChatNotFound(LookupError):
    """No such chat for this user (another user's chat is "not found" too)."""


class ChatLimitReached(Exception):
    """The user has as many chats as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"chat limit reached ({limit} chats)")


class ChatNotCreated(Exception):
    """The record or the transcript could not be written; neither is left behind."""


def create_chat(store: TranscriptStore, user_id: str, max_chats: int) -> str:
    """Create an empty chat: record and transcript are made together or not at all."""
    chat_id = str(uuid.uuid4())
    try:
        with write_transaction():
            if Chat.select().where(Chat.owner == user_id).count() >= max_chats:
                raise ChatLimitReached(max_chats)
            Chat.create(id=chat_id, owner=user_id, name=NEW_CHAT_NAME)
            store.create(user_id, chat_id, [])
    except ChatLimitReached:
        raise
    except Exception:
        log.exception("could not create chat %s", chat_id)
        with contextlib.suppress(Exception):
            store.delete(user_id, chat_id)
        raise ChatNotCreated("could not create the chat") from None
    return chat_id


def find_chat(user_id: str, chat_id: str) -> Chat:
    """Return the user's chat record; another user's chat is simply not found."""
    chat = Chat.get_or_none((Chat.id == chat_id) & (Chat.owner == user_id))
    if chat is None:
        raise ChatNotFound(chat_id)
    return chat


def read_chat(store: TranscriptStore, user_id: str, chat_id: str) -> list[dict]:
    """Return the messages of one of the user's chats."""
    find_chat(user_id, chat_id)
    try:
        return store.read(user_id, chat_id)
    except TranscriptMissing:
        log.error("chat %s has a record but no transcript", chat_id)
        raise ChatNotFound(chat_id) from None


def name_from(messages: list[dict]) -> str | None:
    """Name a chat after its first user message."""
    for message in messages:
        if message.get("role") == "user":
            text = " ".join(str(message.get("content", "")).split())
            if text:
                return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "…"
    return None


def save_chat(store: TranscriptStore, user_id: str, chat_id: str, messages: list[dict]) -> None:
    """Replace a chat's messages, renaming a "New chat" from its first user message."""
    with write_transaction():
        chat = find_chat(user_id, chat_id)
        changes = {Chat.updated_at: utcnow(), Chat.message_count: len(messages)}
        if chat.name == NEW_CHAT_NAME and (name := name_from(messages)):
            changes[Chat.name] = name
        Chat.update(changes).where(Chat.id == chat_id).execute()
        store.write(user_id, chat_id, messages)
