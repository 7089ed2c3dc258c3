"""Find text in one user's saved chats, with bounded work and its own DB connection.

Only rows owned by the user are read, so another user's chats can never match. Tools run
in a tool process, which has no request connection: this opens one if needed.
"""

import logging

from ..storage.database import database_connection
from ..storage.tables import Chat
from ..storage.transcripts import TranscriptMissing, TranscriptStore

log = logging.getLogger(__name__)

MAX_CHATS_SCANNED = 200
MAX_BYTES_READ = 5_000_000
EXCERPT_CHARS = 160


def find_in_chats(transcripts: TranscriptStore, user_id: str, query: str, limit: int) -> list[dict]:
    """Return up to `limit` matches (one per message), newest chats first.

    Reads at most MAX_BYTES_READ of chat contents, counted from each chat's stored size
    (tool calls and their arguments included) before it is read: a user with huge chats
    gets a search of their newest ones, never minutes of CPU.
    """
    needle = query.lower()
    matches: list[dict] = []
    budget = MAX_BYTES_READ
    with database_connection():
        rows = list(
            Chat.newest_first(user_id, Chat.id, Chat.name).limit(MAX_CHATS_SCANNED).tuples()
        )
        for chat_id, chat_name in rows:
            budget -= _size(transcripts, user_id, chat_id)
            if budget < 0:
                log.info("chat search stopped at its %d-byte budget", MAX_BYTES_READ)
                return matches
            for message in _messages(transcripts, user_id, chat_id):
                content = message.get("content")
                if not isinstance(content, str):
                    continue
                position = content.lower().find(needle)
                if position < 0:
                    continue
                matches.append(
                    {
                        "chat_id": chat_id,
                        "chat_name": chat_name,
                        "role": str(message.get("role", "")),
                        "excerpt": excerpt(content, position, len(needle)),
                    }
                )
                if len(matches) >= limit:
                    return matches
    return matches


def excerpt(text: str, start: int, length: int) -> str:
    """About EXCERPT_CHARS of text centred on a hit, whitespace collapsed, cuts marked."""
    window = max(EXCERPT_CHARS, length)
    start = min(start, len(text))  # lower() can change the length of rare characters
    begin = max(0, start - (window - length) // 2)
    end = min(len(text), begin + window)
    begin = max(0, end - window)
    snippet = " ".join(text[begin:end].split())
    return ("…" if begin > 0 else "") + snippet + ("…" if end < len(text) else "")


def _size(transcripts: TranscriptStore, user_id: str, chat_id: str) -> int:
    """What reading the chat costs; a missing chat costs nothing (it is skipped)."""
    try:
        return transcripts.size(user_id, chat_id)
    except TranscriptMissing:
        return 0


def _messages(transcripts: TranscriptStore, user_id: str, chat_id: str) -> list[dict]:
    """The chat's messages; a chat whose contents are missing or unreadable is skipped."""
    try:
        messages = transcripts.read(user_id, chat_id)
    except TranscriptMissing:
        log.warning("chat %s has a row but no contents; skipped by search", chat_id)
        return []
    except (OSError, ValueError):
        log.warning("chat %s could not be read; skipped by search", chat_id, exc_info=True)
        return []
    if not isinstance(messages, list):
        return []
    return [message for message in messages if isinstance(message, dict)]
