"""What the server hands every tool: who is asking and the app's services."""

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from ..storage.transcripts import TranscriptStore


def utc_now() -> datetime.datetime:
    """Aware UTC time; the default clock, replaced by tests that pin the time."""
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class ToolContext:
    """Supplied by the server, never by the model, so a tool cannot act for another user."""

    user_id: str
    transcripts: TranscriptStore
    now: Callable[[], datetime.datetime] = utc_now
