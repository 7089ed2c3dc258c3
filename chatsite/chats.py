"""Chats: a metadata row per chat plus its messages in the chat store, kept in step."""

import contextlib
import logging
import uuid

from .chatstore import ChatMissing, ChatStore
from .db import write_transaction
from .errors import ApiError
from .models import ChatFile, utcnow

log = logging.getLogger(__name__)

NEW_CHAT_NAME = "New chat"
CHAT_NOT_FOUND = "chat not found"
MAX_NAME_CHARS = 60


def create_chat(store: ChatStore, user_id: str, max_chats: int) -> str:
    """Create an empty chat: row and contents are made together or not at all."""
    chat_id = str(uuid.uuid4())
    try:
        with write_transaction():
            if ChatFile.select().where(ChatFile.owner == user_id).count() >= max_chats:
                raise ApiError(400, f"chat limit reached ({max_chats} chats)")
            ChatFile.create(id=chat_id, owner=user_id, name=NEW_CHAT_NAME)
            store.create(user_id, chat_id, [])
    except ApiError:
        raise
    except Exception:
        log.exception("could not create chat %s", chat_id)
        with contextlib.suppress(Exception):
            store.delete(user_id, chat_id)
        raise ApiError(500, "could not create the chat") from None
    return chat_id


def find_chat(user_id: str, chat_id: str) -> ChatFile:
    """Return the user's chat row; another user's chat is simply "not found"."""
    chat = ChatFile.get_or_none((ChatFile.id == chat_id) & (ChatFile.owner == user_id))
    if chat is None:
        raise ApiError(404, CHAT_NOT_FOUND)
    return chat


def read_chat(store: ChatStore, user_id: str, chat_id: str) -> list[dict]:
    """Return the messages of one of the user's chats."""
    find_chat(user_id, chat_id)
    try:
        return store.read(user_id, chat_id)
    except ChatMissing:
        log.error("chat %s has a row but no contents", chat_id)
        raise ApiError(404, CHAT_NOT_FOUND) from None


def name_from(messages: list[dict]) -> str | None:
    """Name a chat after its first user message."""
    for message in messages:
        if message.get("role") == "user":
            text = " ".join(str(message.get("content", "")).split())
            if text:
                return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "…"
    return None


def save_chat(store: ChatStore, user_id: str, chat_id: str, messages: list[dict]) -> None:
    """Replace a chat's messages, renaming a "New chat" from its first user message."""
    with write_transaction():
        chat = find_chat(user_id, chat_id)
        changes = {ChatFile.updated_at: utcnow(), ChatFile.message_count: len(messages)}
        if chat.name == NEW_CHAT_NAME and (name := name_from(messages)):
            changes[ChatFile.name] = name
        ChatFile.update(changes).where(ChatFile.id == chat_id).execute()
        store.write(user_id, chat_id, messages)
