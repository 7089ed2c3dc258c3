"""What the server hands every tool: who is asking and the app's services."""

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from ..clock import utc_now
from ..storage.transcripts import TranscriptStore


@dataclass(frozen=True)
class ToolContext:
    """Supplied by the server, never by the model, so a tool cannot act for another user."""

    user_id: str
    transcripts: TranscriptStore
    now: Callable[[], datetime.datetime] = utc_now  # tests pin the time
