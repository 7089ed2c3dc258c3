"""Chats of an export taken back as new chats of a user, each one whole or not at all.

The document is validated as a whole at the edge first; here each chat is created with
its name, its dates and its messages by `create_chat` (record, transcript and search index
in one transaction), within the user's chat count and storage bounds. A chat that does not
fit is refused and the next one tried: a smaller one may still fit.
"""

import logging
from dataclasses import dataclass, field

from .chats import ChatLimitReached, ChatSeed, ChatStorageFull, create_chat
from .transcripts import TranscriptStore

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """The new chats (id, name) and the refused ones (index in the document, reason)."""

    imported: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)


def import_chats(
    store: TranscriptStore, user_id: str, seeds: list[ChatSeed], max_chats: int, max_bytes: int
) -> ImportReport:
    """Create each seed as a new chat of the user; a refusal leaves nothing of that chat.

    Raises the first refusal when nothing at all could be imported; a chat the storage
    cannot write (ChatNotCreated) stops the import there, keeping the chats before it.
    """
    report = ImportReport()
    first_refusal: Exception | None = None
    for index, seed in enumerate(seeds):
        try:
            chat_id = create_chat(store, user_id, max_chats, max_bytes, seed)
        except (ChatLimitReached, ChatStorageFull) as refusal:
            first_refusal = first_refusal or refusal
            report.refused.append((index, str(refusal)))
            continue
        report.imported.append((chat_id, seed.name))
    if first_refusal is not None and not report.imported:
        raise first_refusal
    if report.refused:
        log.info("import for %s: %d chats refused", user_id, len(report.refused))
    return report
