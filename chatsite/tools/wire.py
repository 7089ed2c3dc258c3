"""What crosses between a worker and its tool processes: one call out, one reply back.

A call is pickled (the worker's own data: the tool's import path, checked arguments, the
caller's context); a reply is JSON text, so the worker never unpickles what a tool process
produced. Each message is framed by its length.
"""

import datetime
import json
import struct
from dataclasses import dataclass
from typing import Any

from ..storage.transcripts import TranscriptStore

MAX_RESULT_CHARS = 16_000
MAX_TRACEBACK_CHARS = 8_000
MAX_REPLY_BYTES = 1024 * 1024  # a reply holds at most these few capped texts
HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class ToolCall:
    """One tool call, self-contained: the tool process rebuilds the context from it."""

    module: str
    qualname: str
    kwargs: dict[str, Any]
    user_id: str
    transcripts: TranscriptStore | None
    database_url: str | None
    now: datetime.datetime | None = None  # the caller's clock when it is not the real one


@dataclass(frozen=True)
class ToolReply:
    """The tool's result as text, or what it raised, described."""

    content: str = ""
    error: str | None = None
    traceback: str | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {"content": self.content, "error": self.error, "traceback": self.traceback}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> "ToolReply":
        """Read a reply; raises ValueError for anything that is not one."""
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("a tool reply must be a JSON object")
        content, error, trace = fields.get("content"), fields.get("error"), fields.get("traceback")
        if not isinstance(content, str) or not all(
            value is None or isinstance(value, str) for value in (error, trace)
        ):
            raise ValueError("malformed tool reply")
        return cls(content, error, trace)


def frame(payload: bytes) -> bytes:
    """Prefix a message with its length."""
    return HEADER.pack(len(payload)) + payload


def cap_result(text: str) -> str:
    """Keep a result within MAX_RESULT_CHARS, saying that it was cut."""
    if len(text) <= MAX_RESULT_CHARS:
        return text
    note = f"\n[truncated: the result was {len(text):,} characters]"
    return text[: MAX_RESULT_CHARS - len(note)] + note
