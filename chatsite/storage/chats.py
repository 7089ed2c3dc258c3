"""Chats: a record per chat plus its transcript in the transcript store, kept in step.

The record is the chat's existence: it is written last when a chat is made and removed
first when it is deleted, so a crash in between leaves at most a transcript nobody lists
(`flask --app chatsite cleanup` removes those), never a listed chat without one.
"""

import base64
import binascii
import contextlib
import datetime
import json
import logging
import uuid
from dataclasses import dataclass, field

from peewee import fn

from ..ids import canonical_uuid
from .database import write_transaction
from .search_index import drop_from_index, index_name
from .tables import Chat, ChatTranscript, stored_now
from .transcripts import TranscriptMissing, TranscriptStore

log = logging.getLogger(__name__)

NEW_CHAT_NAME = "New chat"
MAX_CHAT_NAME_CHARS = 60


class ChatNotFound(LookupError):
    """No such chat for this user (another user's chat is "not found" too)."""


class ChatLimitReached(Exception):
    """The user has as many chats as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"chat limit reached ({limit} chats)")


class ChatNotCreated(Exception):
    """The record or the transcript could not be written; neither is left behind."""


class ChatStorageFull(Exception):
    """The user's chats would take more than the bytes allowed per user."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"chat storage full: your chats may take at most {limit} bytes in all")


def storage_used(user_id: str, except_chat: str | None = None) -> int:
    """Bytes the user's chats take in the transcript store (all, or all but one)."""
    query = Chat.select(fn.COALESCE(fn.SUM(Chat.transcript_bytes), 0)).where(Chat.owner == user_id)
    if except_chat is not None:
        query = query.where(Chat.id != except_chat)
    return int(query.scalar())


def ensure_room(user_id: str, chat_id: str | None, size: int, limit: int) -> None:
    """Raise ChatStorageFull unless the chat can take `size` bytes within the user's bound."""
    if storage_used(user_id, except_chat=chat_id) + size > limit:
        raise ChatStorageFull(limit)


@dataclass(frozen=True)
class ChatSeed:
    """What a chat starts with: empty and "New chat", or an imported chat's all."""

    name: str = NEW_CHAT_NAME
    messages: list[dict] = field(default_factory=list)
    created_at: datetime.datetime | None = None  # naive UTC; None: now
    updated_at: datetime.datetime | None = None


def create_chat(
    store: TranscriptStore,
    user_id: str,
    max_chats: int,
    max_bytes: int,
    seed: ChatSeed = ChatSeed(),
) -> str:
    """Create a chat: record and transcript are made together or not at all."""
    chat_id = str(uuid.uuid4())
    now = stored_now()
    try:
        # The transcript is written (and synced) first; the write lock is held only for
        # the checks, the INSERT and a rename.
        with store.stage(user_id, chat_id, seed.messages, new=True) as staged, write_transaction():
            if Chat.select().where(Chat.owner == user_id).count() >= max_chats:
                raise ChatLimitReached(max_chats)
            ensure_room(user_id, None, staged.size, max_bytes)
            Chat.create(
                id=chat_id,
                owner=user_id,
                name=seed.name,
                created_at=seed.created_at or now,
                updated_at=seed.updated_at or seed.created_at or now,
                message_count=len(seed.messages),
                transcript_bytes=staged.size,
            )
            staged.commit()
    except (ChatLimitReached, ChatStorageFull):
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
            if len(text) > MAX_CHAT_NAME_CHARS:
                return text[: MAX_CHAT_NAME_CHARS - 1] + "…"
            if text:
                return text
    return None


def save_chat(
    store: TranscriptStore,
    user_id: str,
    chat_id: str,
    messages: list[dict],
    accepted: datetime.datetime | None = None,
    replayed: bool = False,
    durable: bool = True,
) -> bool:
    """Replace a chat's messages, renaming a "New chat" from its first user message.

    The transcript is staged before the write lock is taken, and becomes the chat's only
    if the record is updated with it: a locked database never waits on a disk write, and
    record and transcript change together or not at all. A chat deleted meanwhile is not
    found (its UPDATE changes no row), and no transcript is left behind for it.

    `accepted` (default now) becomes the record's `updated_at`. A `replayed` save (from
    the journal) leaves a chat saved at or after its `accepted` as it is: that save is
    either this very one (its answer was lost with the connection) or a later one, which
    holds what the user sent last. A save that is not `durable` (an answer's checkpoint)
    lets the store skip its fsyncs and the search index (see `TranscriptStore`). Return
    whether the chat was written.
    """
    accepted = accepted or stored_now()
    stage = store.stage(user_id, chat_id, messages, durable=durable)
    with stage as staged, write_transaction():
        chat = find_chat(user_id, chat_id)
        if replayed and chat.updated_at >= accepted:
            return False
        changes = {
            Chat.updated_at: accepted,
            Chat.message_count: len(messages),
            Chat.transcript_bytes: staged.size,
        }
        unnamed = chat.name == NEW_CHAT_NAME and chat.named_by != "user"
        if unnamed and (name := name_from(messages)):
            changes[Chat.name] = name
            changes[Chat.named_by] = "message"
        if not Chat.update(changes).where(Chat.id == chat_id).execute():
            raise ChatNotFound(chat_id)
        staged.commit()
    return True


def rename_chat(user_id: str, chat_id: str, name: str) -> None:
    """Give one of the user's chats the name the user chose (no title ever replaces it)."""
    with write_transaction():
        find_chat(user_id, chat_id)
        Chat.update(name=name, named_by="user").where(Chat.id == chat_id).execute()
        index_name(chat_id, name)


def chat_named_by(user_id: str, chat_id: str) -> str | None:
    """Who named the user's chat ("new", "message", "title", "user"); None: no such chat."""
    chat = Chat.get_or_none((Chat.id == chat_id) & (Chat.owner == user_id))
    return None if chat is None else chat.named_by


def name_titled(user_id: str, chat_id: str, title: str, replaces: tuple[str, ...]) -> bool:
    """Name the chat with a model's title if its name is one a title `replaces` (never
    the user's), in one conditional UPDATE; tell whether it was."""
    assert "user" not in replaces
    with write_transaction():
        renamed = (
            Chat.update(name=title, named_by="title")
            .where((Chat.id == chat_id) & (Chat.owner == user_id) & Chat.named_by.in_(replaces))
            .execute()
        )
        if renamed:
            index_name(chat_id, title)
    return bool(renamed)


def delete_chat(store: TranscriptStore, user_id: str, chat_id: str) -> None:
    """Delete one of the user's chats: its record first, then its transcript.

    A crash between the two leaves a transcript that no record lists: nothing shows it,
    nothing counts it, and `cleanup` removes it.
    """
    with write_transaction():
        find_chat(user_id, chat_id)
        ChatTranscript.delete().where(ChatTranscript.chat == chat_id).execute()
        drop_from_index(chat_id)
        Chat.delete().where(Chat.id == chat_id).execute()
    store.delete(user_id, chat_id)
    log.info("deleted chat %s", chat_id)


# -- listing, newest first, by keyset pages ----------------------------------------------


class BadCursor(ValueError):
    """A `before` cursor this server did not hand out."""


@dataclass(frozen=True)
class ChatSummary:
    """A line of the user's list of chats."""

    id: str
    name: str
    created_at: datetime.datetime
    updated_at: datetime.datetime


def encode_cursor(updated_at: datetime.datetime, chat_id: str) -> str:
    """The opaque cursor of the page after the chat (its last update, its id)."""
    raw = json.dumps([updated_at.isoformat(), chat_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime.datetime, str]:
    """(last update, id) from a cursor; BadCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, chat_id = json.loads(raw)
        updated_at = datetime.datetime.fromisoformat(stamp)
        if updated_at.tzinfo is not None:
            raise ValueError("an aware time")
        return updated_at, canonical_uuid(chat_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor("not a cursor this server gave") from None


def list_chats(
    user_id: str, limit: int, before: str | None = None
) -> tuple[list[ChatSummary], str | None]:
    """One page of the user's chats, newest update first, and the cursor of the next.

    Keyset paging on (updated_at, id), a unique order: a page starts strictly after the
    chat the cursor names, so chats added or updated meanwhile (they go to the top) never
    make another chat skip a page or show twice.
    """
    query = Chat.newest_first(user_id, Chat.id, Chat.name, Chat.created_at, Chat.updated_at)
    if before is not None:
        updated_at, chat_id = decode_cursor(before)
        query = query.where(
            (Chat.updated_at < updated_at) | ((Chat.updated_at == updated_at) & (Chat.id < chat_id))
        )
    rows = [ChatSummary(*row) for row in query.limit(limit + 1).tuples()]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].updated_at, rows[-1].id)


def count_unsized_chats(store: TranscriptStore) -> int:
    """Record the size of every transcript saved before sizes were kept; return how many.

    `init-db` runs it: chats of an older database count against the storage bound from
    then on.
    """
    counted = 0
    unsized = Chat.select(Chat.id, Chat.owner).where(Chat.transcript_bytes == 0).tuples()
    for chat_id, user_id in list(unsized):
        try:
            size = store.size(user_id, chat_id)
        except TranscriptMissing:
            continue
        Chat.update(transcript_bytes=size).where(Chat.id == chat_id).execute()
        counted += 1
    return counted
