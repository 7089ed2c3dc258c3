"""Everything kept about a user, as one JSON or Markdown document, written piece by piece.

The document is never built whole: chats are read a page at a time (newest first by
creation, which never changes, so a chat saved during the export is neither missed nor
repeated) and each is written out as soon as it is read. The generator opens its own
database connection for each page, as the request's is gone once streaming begins.
"""

import datetime
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from ..clock import stamp_of as stamp
from ..clock import utc_stamp
from .database import database_connection
from .tables import Chat, User
from .transcripts import TranscriptMissing, TranscriptStore

log = logging.getLogger(__name__)

EXPORT_FORMAT = "chatsite-export"
EXPORT_VERSION = 1
PAGE_SIZE = 50  # chats read per database round trip


@dataclass(frozen=True)
class ExportedChat:
    chat_id: str
    name: str
    created_at: datetime.datetime
    updated_at: datetime.datetime
    messages: list


def user_settings(user: User) -> dict:
    """The user's own settings, as the export gives them."""
    return {
        "uuid": user.uuid,
        "nickname": user.nickname,
        "prompt_data": {"system": user.system_prompt},
        "site_prefs": {"model": user.preferred_model},
        "created_at": stamp(user.created_at),
    }


def chats_newest_first(store: TranscriptStore, user_id: str) -> Iterator[ExportedChat]:
    """Every chat of the user with its messages, newest first by creation, page by page."""
    after: tuple[datetime.datetime, str] | None = None
    while True:
        with database_connection():
            query = Chat.select(Chat.id, Chat.name, Chat.created_at, Chat.updated_at).where(
                Chat.owner == user_id
            )
            if after is not None:
                created, chat_id = after
                query = query.where(
                    (Chat.created_at < created)
                    | ((Chat.created_at == created) & (Chat.id < chat_id))
                )
            rows = list(
                query.order_by(Chat.created_at.desc(), Chat.id.desc()).limit(PAGE_SIZE).tuples()
            )
            chats = [ExportedChat(*row, _messages(store, user_id, row[0])) for row in rows]
        yield from chats
        if len(rows) < PAGE_SIZE:
            return
        after = (rows[-1][2], rows[-1][0])


def _messages(store: TranscriptStore, user_id: str, chat_id: str) -> list:
    try:
        return store.read(user_id, chat_id)
    except TranscriptMissing:
        log.error("chat %s has a record but no transcript; exported empty", chat_id)
        return []


def export_json(store: TranscriptStore, settings: dict) -> Iterator[str]:
    """The export as JSON text, in pieces: the settings, then one chat at a time."""
    head = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": utc_stamp()}
    head["user"] = settings
    yield json.dumps(head, ensure_ascii=False)[:-1] + ', "chats": ['
    for index, chat in enumerate(chats_newest_first(store, settings["uuid"])):
        entry = {
            "id": chat.chat_id,
            "name": chat.name,
            "created_at": stamp(chat.created_at),
            "updated_at": stamp(chat.updated_at),
            "messages": chat.messages,
        }
        yield ("," if index else "") + json.dumps(entry, ensure_ascii=False)
    yield "]}\n"


def export_markdown(store: TranscriptStore, settings: dict) -> Iterator[str]:
    """The export as one Markdown document: a heading per chat, a paragraph per message."""
    who = settings["nickname"] or settings["uuid"]
    yield f"# Chats of {who}\n\nExported {utc_stamp()} from chatsite.\n"
    if settings["prompt_data"]["system"]:
        yield f"\n**System prompt:** {settings['prompt_data']['system']}\n"
    for chat in chats_newest_first(store, settings["uuid"]):
        yield (
            f"\n## {chat.name}\n\n"
            f"_Created {stamp(chat.created_at)}, updated {stamp(chat.updated_at)}._\n"
        )
        for message in chat.messages:
            if not isinstance(message, dict):
                continue
            when = f" ({message['timestamp']})" if message.get("timestamp") else ""
            yield f"\n**{message.get('role', '?')}**{when}:\n\n{message.get('content', '')}\n"
