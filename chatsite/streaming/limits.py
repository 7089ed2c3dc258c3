"""Keep what /chat saves within what /chat accepts, so that a saved chat can be sent back.

Request messages are held to `MAX_MESSAGE_CHARS` per text, `MAX_MESSAGES` and the body
limit `MAX_CONTENT_LENGTH`; the reply is held to the same by `ReplyRoom`: each text it
saves fits `MAX_MESSAGE_CHARS`, and with a chat file the whole chat (request messages, tool
exchanges, reply) fits `MAX_MESSAGES` and, as compact JSON, the body limit less some room
for the rest of a body. A reply that reaches a limit ends there, saying so in-band. The
bound is kept as the reply grows, because what one reply can add at worst (every text at
its cap, every character escaped, every tool round) is larger than the body limit itself.
"""

import math
from collections.abc import Sequence
from typing import Any

import orjson

LENGTH_NOTE = "\n\n[stopped: the reply reached its length limit]"
TOO_MANY_ROUNDS = "\n\n[stopped: the model asked for tools too many times]"
NO_ROOM_NOTE = "\n[cut: no room left in this chat]"
NOTE_ROOM = max(len(LENGTH_NOTE), len(TOO_MANY_ROUNDS))

MAX_TOOL_CALLS = 32  # per message, as /chat accepts them; later calls of a round are dropped
BODY_HEADROOM = 64 * 1024  # of the body limit, kept for the token, system prompt and options
MIN_REPLY_BYTES = 4096  # a chat with less room than this left for the reply is refused
# The most a message adds besides its texts: keys, role, timestamp, flags, a comma.
MESSAGE_OVERHEAD = 160


def body_size(value: Any) -> int:
    """Bytes of `value` in a request body: compact UTF-8 JSON, as a browser sends it.

    Not what a store keeps (`storage.transcripts.transcript_size`): this one is held to
    the body limit, that one to the user's storage bound.
    """
    return len(orjson.dumps(value))


def text_size(text: str) -> int:
    """Bytes of a string inside a JSON document (escapes included, quotes not)."""
    return body_size(text) - 2


def prefix_within(text: str, max_chars: int, max_bytes: float) -> str:
    """The longest start of `text` within `max_chars` characters and `max_bytes` bytes."""
    text = text[: max(0, max_chars)]
    if text_size(text) <= max_bytes:
        return text
    fits, too_long = 0, len(text)
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if text_size(text[:middle]) <= max_bytes:
            fits = middle
        else:
            too_long = middle
    return text[:fits]


def body_budget(max_content_length: int) -> int:
    """Bytes a saved chat's messages may take so that it still fits in a request body."""
    return max_content_length - min(BODY_HEADROOM, max_content_length // 4)


class ChatTooLong(ValueError):
    """The chat is already too long for one more reply to be saved in it."""


class ReplyRoom:
    """What the reply may still add: characters per text, messages and bytes in the chat.

    Without a chat file only the per-text cap applies (nothing is saved, but a front end
    may still send the reply back as a message).
    """

    def __init__(
        self,
        message_chars: int,
        max_messages: int | None = None,
        max_bytes: int | None = None,
        saved: Sequence[dict] = (),
    ) -> None:
        self.message_chars = message_chars
        self.messages_left: float = math.inf
        self.bytes_left: float = math.inf
        if max_messages is not None:
            self.messages_left = max_messages - len(saved) - 1  # the reply itself
            if self.messages_left < 0:
                raise ChatTooLong(f"a chat holds at most {max_messages} messages")
        if max_bytes is not None:
            final = MESSAGE_OVERHEAD + max(map(text_size, (LENGTH_NOTE, TOO_MANY_ROUNDS)))
            self.bytes_left = max_bytes - body_size(list(saved)) - final
            if self.bytes_left < MIN_REPLY_BYTES:
                raise ChatTooLong("the chat has reached its size limit")
        self.chars = {"content": 0, "thinking": 0}

    def take(self, kind: str, piece: str) -> tuple[str, bool]:
        """Take the part of a `content` or `thinking` piece that fits; True once it is full."""
        cap = self.message_chars - (NOTE_ROOM if kind == "content" else 0)
        room = cap - self.chars[kind]
        counted = self.bytes_left != math.inf  # sizes cost an encoding: only when they count
        size = text_size(piece) if counted else 0
        fitted = piece
        if len(piece) > room or size > self.bytes_left:
            fitted = prefix_within(piece, room, self.bytes_left)
            size = text_size(fitted) if counted else 0
        self.chars[kind] += len(fitted)
        self.bytes_left -= size
        return fitted, fitted != piece

    def note(self, text: str) -> str:
        """A closing note for the reply's text, within the room kept for it."""
        return text[: max(0, self.message_chars - self.chars["content"])]

    def take_tool_round(self, assistant: dict, calls: int) -> bool:
        """Make room for a tool round (its message and one result per call), or say no."""
        needed = MESSAGE_OVERHEAD + body_size({**assistant, "content": "", "thinking": ""})
        needed += calls * self._tool_message_size(assistant)
        if 1 + calls > self.messages_left or needed > self.bytes_left:
            return False
        self.messages_left -= 1 + calls
        self.bytes_left -= needed
        self.chars = {"content": 0, "thinking": 0}  # the reply goes on in a new message
        return True

    def _tool_message_size(self, assistant: dict) -> int:
        """The room kept for each result: its message and a note, at the longest tool name."""
        names = [call["function"]["name"] for call in assistant["tool_calls"]]
        return MESSAGE_OVERHEAD + max(map(text_size, names), default=0) + text_size(NO_ROOM_NOTE)

    def take_tool_result(self, content: str) -> str:
        """Fit a tool result in its message: the room kept for a note, plus what is spare."""
        note_size = text_size(NO_ROOM_NOTE)
        if len(content) > self.message_chars or text_size(content) > self.bytes_left + note_size:
            cap = self.message_chars - len(NO_ROOM_NOTE)
            content = prefix_within(content, cap, self.bytes_left) + NO_ROOM_NOTE
            content = content[: self.message_chars]
        self.bytes_left -= max(0, text_size(content) - note_size)
        return content
