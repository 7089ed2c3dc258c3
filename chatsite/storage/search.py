"""Search one user's chats through the index, with a snippet around each chat's first match.

Only the user's rows are read, so another user's chats can never match. The index finds the
chats; their transcripts are read only for the snippets of the chats returned, within a byte
budget. Used by `/search-chats` and by the `search_chats` tool (which runs in a tool process,
without a request's connection: this opens one when needed).
"""

import datetime
import logging
from dataclasses import dataclass

from .database import database_connection
from .search_index import find
from .transcripts import TranscriptStore
from .words import Term, locate, query_terms

log = logging.getLogger(__name__)

SNIPPET_CHARS = 160
MAX_SNIPPET_BYTES = 5_000_000  # transcript bytes read for the snippets of one search


class EmptySearch(ValueError):
    """The query has no word to look for (only spaces or punctuation)."""

    def __init__(self) -> None:
        super().__init__("q: must hold at least one word")


@dataclass(frozen=True)
class SearchHit:
    """One chat found: `role` is the role of the message the snippet is from (None: the name)."""

    chat_id: str
    name: str
    created_at: datetime.datetime
    updated_at: datetime.datetime
    snippet: str
    role: str | None


def search_chats(store: TranscriptStore, user_id: str, query: str, limit: int) -> list[SearchHit]:
    """The user's chats whose name or messages hold every word of `query`, newest first."""
    terms = query_terms(query)
    if not terms:
        raise EmptySearch()
    with database_connection():
        rows = find(user_id, terms, limit)
        return _with_snippets(store, user_id, rows, terms)


def _with_snippets(
    store: TranscriptStore, user_id: str, rows: list[tuple], terms: list[Term]
) -> list[SearchHit]:
    """The hits, each with its snippet, reading at most MAX_SNIPPET_BYTES of transcripts
    (in one go: one query for the database store); a chat whose transcript is missing or
    unreadable is left out."""
    budget, readable = MAX_SNIPPET_BYTES, []
    for chat_id, *_, size in rows:
        if size <= budget:
            budget -= size
            readable.append(chat_id)
    transcripts = store.read_many(user_id, readable)
    hits = []
    for chat_id, name, created_at, updated_at, _ in rows:
        if chat_id in readable and chat_id not in transcripts:
            log.warning("chat %s is indexed but has no transcript; not shown", chat_id)
            continue
        snippet, role = first_match(name, transcripts.get(chat_id, []), terms)
        hits.append(SearchHit(chat_id, name, created_at, updated_at, snippet, role))
    return hits


def first_match(name: str, messages: list, terms: list[Term]) -> tuple[str, str | None]:
    """(snippet, role) of the first message holding a term, oldest first; else the name's."""
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and (place := locate(content, terms)):
            return excerpt(content, *place), str(message.get("role", ""))
    place = locate(name, terms) or (0, 0)
    return excerpt(name, *place), None


def excerpt(text: str, start: int, length: int) -> str:
    """About SNIPPET_CHARS of text centred on a hit, whitespace collapsed, cuts marked."""
    window = max(SNIPPET_CHARS, length)
    start = min(start, len(text))
    begin = max(0, start - (window - length) // 2)
    end = min(len(text), begin + window)
    begin = max(0, end - window)
    snippet = " ".join(text[begin:end].split())
    return ("…" if begin > 0 else "") + snippet + ("…" if end < len(text) else "")
