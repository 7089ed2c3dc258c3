"""Ollama's HTTP API: /api/tags, /api/show, /api/ps, /api/chat and /api/generate (NDJSON).

The neutral chat message shape is Ollama's own (arguments as objects, results named by
`tool_name`), so messages go out as they are, less chatsite's own fields.
"""

import logging
from typing import Any

from ..client import InstanceClient, read_object
from ..errors import INVALID_ANSWER, SERVER_ERROR, InstanceError
from .base import (
    CONTENT,
    MAX_MODEL_NAME_CHARS,
    THINKING,
    TOOL,
    ChatRequest,
    CompletionRequest,
    Prepared,
    WireProtocol,
    known_capabilities,
    nonsense,
)

log = logging.getLogger(__name__)

# What the model sees of a saved message: no timestamps or local flags such as `incomplete`.
UPSTREAM_FIELDS = ("role", "content", "tool_calls", "tool_name", "images", "thinking")


def normalize_model(name: str) -> str:
    """Give an untagged model name Ollama's implicit `:latest` tag."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def upstream_messages(messages: list[dict], system: str) -> list[dict]:
    """The conversation for the model: the system prompt first, then the messages."""
    prepared = [{"role": "system", "content": system}] if system else []
    for message in messages:
        prepared.append({k: message[k] for k in UPSTREAM_FIELDS if k in message})
    return prepared


def _typed(value: Any, kind: type, default: Any, what: str) -> Any:
    """`value` if of `kind` (bools are no numbers), `default` if absent, else nonsense."""
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise nonsense(f"{what} is not a {kind.__name__}")
    return value


def model_entry(entry: Any) -> dict[str, Any]:
    """Check one model of /api/tags and shape it as /models lists it (capabilities aside)."""
    if not isinstance(entry, dict):
        raise nonsense("tags: a model that is not an object")
    name = _typed(entry.get("name") or entry.get("model"), str, "", "tags: a model name")
    if not 0 < len(name) <= MAX_MODEL_NAME_CHARS or not name.isprintable() or " " in name:
        raise nonsense("tags: a model without a usable name")
    details = _typed(entry.get("details"), dict, {}, "tags: details")
    size = _typed(entry.get("size"), int, 0, "tags: size")
    if size < 0:
        raise nonsense("tags: a negative size")
    return {
        "name": normalize_model(name),
        "family": _typed(details.get("family"), str, "", "tags: family"),
        "parameter_size": _typed(details.get("parameter_size"), str, "", "tags: parameter size"),
        "quantization_level": _typed(
            details.get("quantization_level"), str, "", "tags: quantization level"
        ),
        "size": size,
        "modified_at": _typed(entry.get("modified_at"), str, "", "tags: modified_at"),
        "digest": _typed(entry.get("digest"), str, "", "tags: digest"),
    }


def model_entries(answer: Any) -> list[dict[str, Any]]:
    """Check the answer of /api/tags: `{"models": [model, ...]}`."""
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise nonsense("tags: not an object with a list of models")
    return [model_entry(entry) for entry in models]


def capabilities_in(answer: Any) -> list[str]:
    """Check the answer of /api/show and return the known capabilities it reports."""
    if not isinstance(answer, dict):
        raise nonsense("show: not an object")
    capabilities = answer.get("capabilities")
    if capabilities is None:
        return ["completion"]  # servers older than the field
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise nonsense("show: capabilities is not a list of strings")
    return known_capabilities(capabilities)


def _line(line: bytes) -> dict[str, Any]:
    data = read_object(line)
    if "error" in data:
        raise InstanceError(SERVER_ERROR, detail=data["error"])
    return data


def _end(data: dict[str, Any]) -> str | None:
    """The end reason of the last line (the one with `done: true`)."""
    if data.get("done") is not True:
        return None
    reason = data.get("done_reason")
    return reason if reason == "length" else "stop"  # "load", "unload", none: complete too


def decode_chat(line: bytes, out: list) -> str | None:
    """One /api/chat line: its thinking, text and (whole) tool calls."""
    data = read_object(line)
    if "error" in data:
        raise InstanceError(SERVER_ERROR, detail=data["error"])
    message = data.get("message")
    if message:
        if not isinstance(message, dict):
            raise InstanceError(INVALID_ANSWER, detail="a message that is not an object")
        piece = message.get("thinking")
        if piece:
            out.append((THINKING, _text(piece, "thinking")))
        piece = message.get("content")
        if piece:
            out.append((CONTENT, _text(piece, "content")))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                out.append((TOOL, _whole_call(call)))
    return _end(data) if data.get("done") is True else None


def _text(piece: Any, kind: str) -> str:
    if not isinstance(piece, str):
        raise InstanceError(INVALID_ANSWER, detail=f"a {kind} that is not a string")
    return piece


def _whole_call(call: Any) -> tuple[None, str | None, str, object]:
    """A whole call as a fragment; arguments that are no object count as none, as ever."""
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments")
    call_id = call.get("id") if isinstance(call, dict) else None
    return (
        None,
        call_id if isinstance(call_id, str) else None,
        str(function.get("name") or ""),
        arguments if isinstance(arguments, dict) else {},
    )


def decode_generate(line: bytes, out: list) -> str | None:
    """One /api/generate line: its text."""
    data = _line(line)
    piece = data.get("response")
    if piece:
        if not isinstance(piece, str):
            raise InstanceError(INVALID_ANSWER, detail="a response that is not a string")
        out.append((CONTENT, piece))
    return _end(data)


class OllamaProtocol(WireProtocol):
    """An Ollama server: it tells each model's capabilities and which ones are loaded."""

    api = "ollama"
    sse = False

    def __init__(self) -> None:
        self._capabilities: dict[tuple[str, str], list[str]] = {}  # (name, digest) -> ...

    def models(self, client: InstanceClient) -> list[dict[str, Any]]:
        listed = []
        for entry in model_entries(client.get_json("GET", "/api/tags")):
            key = (entry["name"], entry.pop("digest"))
            if key not in self._capabilities:
                answer = client.get_json("POST", "/api/show", {"model": entry["name"]})
                self._capabilities[key] = capabilities_in(answer)
            listed.append({**entry, "capabilities": self._capabilities[key]})
        return listed

    def loaded(self, client: InstanceClient) -> set[str]:
        data = client.get_json("GET", "/api/ps")
        entries = data.get("models") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return set()
        names = (str(e.get("name") or e.get("model") or "") for e in entries if isinstance(e, dict))
        return {normalize_model(name) for name in names if name}

    def chat(self, request: ChatRequest, model: str) -> Prepared:
        body: dict[str, Any] = {
            "model": model,
            "messages": upstream_messages(request.messages, request.system),
            "options": request.options,
        }
        if request.tools:
            body["tools"] = request.tools
        if request.think is not None:
            body["think"] = request.think
        return Prepared("/api/chat", body, decode_chat)

    def completion(self, request: CompletionRequest, model: str) -> Prepared:
        body: dict[str, Any] = {"model": model, "prompt": request.prompt}
        if request.suffix is not None:
            body["suffix"] = request.suffix
        body["options"] = request.options
        return Prepared("/api/generate", body, decode_generate)
