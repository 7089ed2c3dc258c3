"""What every wire protocol turns into, and out of: protocol-neutral requests and pieces.

The streaming layer, the tool loop and saved chats see only these. A chat message keeps
one neutral shape whichever wire served it (the shape `/get-chat` returns): `role`,
`content`, and optionally `thinking`, `images`, `tool_calls` as
`[{"id"?, "function": {"name", "arguments": {...}}}]` (arguments an object) and, on tool
results, `tool_name`. A tool result answers the call of the assistant message before it
in the same position, which is how a wire that names calls by id finds its id again.

An answer streams as pieces, plain tuples `(kind, value)` (one per piece of text: no
object per chunk beyond the tuple): `(CONTENT, text)`, `(THINKING, text)` and
`(TOOL, (index, id, name, arguments))`, one fragment of a tool call that `ToolCalls`
assembles. A decoder appends the pieces of one wire line to a list and returns the
answer's end reason on its last line (`"stop"`, `"tool_calls"` or `"length"`: all
complete), None before it; an error or an abnormal end raises `InstanceError`.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import INVALID_ANSWER, InstanceError

log = logging.getLogger(__name__)

CONTENT = "content"
THINKING = "thinking"
TOOL = "tool"

# Appends the pieces of one line to the list; returns the end reason on the last line.
Decoder = Callable[[bytes, list], str | None]

MAX_MODEL_NAME_CHARS = 200  # of a model's name, as the instances list it and clients send it
MAX_TOOL_NAME_CHARS = 200  # of a tool's name and a call's id, as /chat accepts them again
MAX_ARGUMENT_CHARS = 1024 * 1024  # of one call's arguments, assembled
MAX_ASSEMBLED_CALLS = 256  # fragments naming more calls than this are a broken answer


@dataclass
class ChatRequest:
    """A /chat turn for any wire: the tool loop appends to `messages` between rounds."""

    model: str
    messages: list[dict]
    system: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None  # function-tool schemas, the same on both wires
    think: bool | None = None  # None: the model's default


@dataclass
class CompletionRequest:
    """A /generate request: a prompt, and a suffix for fill-in-the-middle."""

    model: str
    prompt: str
    suffix: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """What one wire makes of a request: where to POST it, the body, how to read the answer."""

    path: str
    body: dict[str, Any]
    decode: Decoder


@dataclass
class ToolCall:
    """One assembled call: `call` as saved and sent back, `arguments` as the tool gets them.

    They differ only for arguments that are not a JSON object: the saved call then has
    `{}` and the tool is handed the text, which it answers with an error for the model.
    """

    call: dict[str, Any]
    arguments: object


class _Assembling:
    __slots__ = ("id", "name", "pieces", "whole")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id
        self.name = name or ""
        self.pieces: list[str] = []
        self.whole: object = None  # arguments that came as one object (Ollama)


class ToolCalls:
    """Assemble the tool-call fragments of one answer, in the order the calls began.

    A fragment with index None is a whole call (Ollama's wire). Otherwise fragments are
    joined by index, with the arguments text split anywhere; a fragment that repeats the
    id and name of its call adds only its arguments, and one that shares an index with an
    earlier call but names another id starts a new call (servers that give every call of
    a parallel batch the same index).
    """

    def __init__(self) -> None:
        self._calls: list[_Assembling] = []
        self._by_index: dict[int, _Assembling] = {}
        self._chars = 0

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, fragment: tuple[int | None, str | None, str | None, object]) -> None:
        """Take one fragment `(index, id, name, arguments)`."""
        index, call_id, name, arguments = fragment
        current = None if index is None else self._by_index.get(index)
        if current is None or (call_id and current.id and call_id != current.id):
            if len(self._calls) >= MAX_ASSEMBLED_CALLS:
                raise InstanceError(INVALID_ANSWER, detail="too many tool calls")
            current = _Assembling(call_id, name)
            self._calls.append(current)
            if index is not None:
                self._by_index[index] = current
        else:
            if call_id and not current.id:
                current.id = call_id
            if name and not current.name:
                current.name = name
        if isinstance(arguments, str):
            if arguments:
                self._chars += len(arguments)
                if self._chars > MAX_ARGUMENT_CHARS:
                    raise InstanceError(INVALID_ANSWER, detail="tool arguments too long")
                current.pieces.append(arguments)
        elif arguments is not None:
            current.whole = arguments

    def calls(self) -> list[ToolCall]:
        """The assembled calls; arguments text is parsed here, once it is whole."""
        return [self._finished(call) for call in self._calls]

    @staticmethod
    def _finished(assembling: _Assembling) -> ToolCall:
        arguments: object = assembling.whole
        if assembling.pieces:
            text = "".join(assembling.pieces)
            try:
                arguments = orjson.loads(text) if text.strip() else {}
            except orjson.JSONDecodeError:
                arguments = text  # the tool answers it with an error the model can read
        elif arguments is None:
            arguments = {}
        call: dict[str, Any] = {
            "function": {
                "name": assembling.name[:MAX_TOOL_NAME_CHARS],
                "arguments": arguments if isinstance(arguments, dict) else {},
            }
        }
        if assembling.id:
            call["id"] = assembling.id[:MAX_TOOL_NAME_CHARS]
        return ToolCall(call, arguments)


def answered_calls(messages: list[dict]) -> list[tuple[dict, dict | None]]:
    """Each message with the tool call it answers (None for all but tool results).

    A tool result answers the first call, not yet answered, of the latest assistant
    message with calls that has the result's `tool_name`, else the first one not answered.
    """
    paired: list[tuple[dict, dict | None]] = []
    open_calls: list[dict] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            open_calls = list(message["tool_calls"])
            paired.append((message, None))
        elif role == "tool":
            name = message.get("tool_name")
            match = next((c for c in open_calls if c["function"].get("name") == name), None)
            if match is None and open_calls:
                match = open_calls[0]
            if match is not None:
                open_calls.remove(match)
            paired.append((message, match))
        else:
            paired.append((message, None))
    return paired


# What a server may report or an operator configure; other words are left out.
KNOWN_CAPABILITIES = frozenset({"completion", "tools", "insert", "vision", "thinking", "embedding"})


def known_capabilities(words: list[str]) -> list[str]:
    """The known capabilities among `words`, in their order, once each."""
    return list(dict.fromkeys(word for word in words if word in KNOWN_CAPABILITIES))


def nonsense(what: str) -> InstanceError:
    """An answer that is not the wire's shape: the instance is left out, like one down."""
    return InstanceError(INVALID_ANSWER, retryable=True, detail=what)


def error_text(body: bytes) -> str:
    """Read an error body's text: `{"error": "..."}` or `{"error": {"message": "..."}}`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "no error text"
    message = data.get("error") if isinstance(data, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if message is None and isinstance(data, dict) and data.get("object") == "error":
        message = data.get("message")  # vLLM's older, unwrapped shape
    return message if isinstance(message, str) and message else "no error text"


class WireProtocol:
    """One wire protocol, as one instance speaks it (one object per instance)."""

    api = ""  # its name in CHAT_INSTANCES' `api`
    sse = False  # streamed answers are server-sent events (else NDJSON)

    def models(self, client: Any) -> list[dict[str, Any]]:
        """The instance's models as /models lists them, capabilities included."""
        raise NotImplementedError

    def loaded(self, client: Any) -> set[str]:
        """The models the instance has in memory (none known: an empty set)."""
        return set()

    def chat(self, request: ChatRequest, model: str) -> Prepared:
        """The call for a chat turn; `model` is the name this instance knows the model by."""
        raise NotImplementedError

    def completion(self, request: CompletionRequest, model: str) -> Prepared:
        """The call for a completion (fill-in-the-middle with a suffix)."""
        raise NotImplementedError

    def error_text(self, body: bytes) -> str:
        """The text of an error answer's body, for the log."""
        return error_text(body)

    def unsupported_options(self, options: dict[str, Any]) -> list[str]:
        """The options this wire has no way to send (the request is refused, never cut)."""
        return []
