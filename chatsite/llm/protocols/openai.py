"""The OpenAI API as vLLM, SGLang and llama.cpp serve it: /models, /chat/completions and
/completions, streamed as server-sent events. The instance's URL ends in `/v1`.

The API tells model ids only: capabilities come from the operator's configuration (a
model not listed there has `completion` only), and nothing tells what is loaded.
"""

import logging
from typing import Any

import orjson

from ..client import InstanceClient, read_object
from ..errors import ENDED_EARLY, INVALID_ANSWER, SERVER_ERROR, InstanceError
from .base import (
    CONTENT,
    MAX_MODEL_NAME_CHARS,
    THINKING,
    TOOL,
    ChatRequest,
    CompletionRequest,
    Prepared,
    WireProtocol,
    answered_calls,
    nonsense,
)

log = logging.getLogger(__name__)

# chatsite's option -> the body field that carries it on this wire (top-level fields all:
# top_k, min_p and repeat_penalty are the extra sampling fields vLLM and llama.cpp take).
OPTION_FIELDS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
}
NORMAL_ENDS = frozenset({"stop", "tool_calls", "length"})
# Where servers put reasoning: llama.cpp and older vLLM, vLLM since, and some others.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
IMAGE_TYPES = {
    "iVBOR": "image/png",
    "/9j/": "image/jpeg",
    "R0lGOD": "image/gif",
    "UklGR": "image/webp",
}


def _image_part(data: str) -> dict[str, Any]:
    """A base64 image (how /chat takes them) as a data URL, its type told by its first bytes."""
    kind = next((t for prefix, t in IMAGE_TYPES.items() if data.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{data}"}}


def upstream_messages(messages: list[dict], system: str) -> list[dict]:
    """Neutral messages in this wire's shape: arguments as JSON text, results by call id.

    A call saved without an id (from an Ollama instance) gets one made from its place, and
    its result the same: a chat moves between the kinds as it is.
    """
    prepared: list[dict] = [{"role": "system", "content": system}] if system else []
    ids: dict[int, str] = {}
    for position, (message, answered) in enumerate(answered_calls(messages)):
        role = message["role"]
        out: dict[str, Any] = {"role": role, "content": message.get("content", "")}
        if message.get("images") and role == "user":
            out["content"] = [
                {"type": "text", "text": out["content"]},
                *(_image_part(image) for image in message["images"]),
            ]
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for number, call in enumerate(message["tool_calls"]):
                call_id = call.get("id") or f"call_{position}_{number}"
                ids[id(call)] = call_id
                function = call["function"]
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": function["name"],
                            "arguments": orjson.dumps(function.get("arguments") or {}).decode(),
                        },
                    }
                )
            out["tool_calls"] = calls
        elif role == "tool":
            # A result that answers no call keeps an id of its own: the server judges it.
            out["tool_call_id"] = ids.get(id(answered), f"call_{position}")
        prepared.append(out)
    return prepared


def _error(data: dict[str, Any]) -> InstanceError | None:
    """An in-band error object (`{"error": {...}}`, or vLLM's older unwrapped one)."""
    error = data.get("error")
    if error is None and data.get("object") == "error":
        error = data
    if error is None:
        return None
    message = error.get("message") if isinstance(error, dict) else error
    return InstanceError(SERVER_ERROR, detail=message or "no error text")


def _choice(line: bytes) -> dict[str, Any] | None:
    """The first choice of an event, None for one without (usage), or raise its error."""
    if line.startswith(b"[DONE]"):
        raise InstanceError(ENDED_EARLY, detail="[DONE] before a finish_reason")
    data = read_object(line)
    choices = data.get("choices")
    if not choices:
        error = _error(data)
        if error is not None:
            raise error
        return None
    choice = choices[0] if isinstance(choices, list) else None
    if not isinstance(choice, dict):
        raise InstanceError(INVALID_ANSWER, detail="a choice that is not an object")
    return choice


def _end(choice: dict[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    if reason is None or reason in NORMAL_ENDS:
        return reason
    raise InstanceError(SERVER_ERROR, detail=f"finish_reason {str(reason)[:50]!r}")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InstanceError(INVALID_ANSWER, detail=f"a {what} that is not a string")
    return value


def decode_chat(line: bytes, out: list) -> str | None:
    """One chat.completion.chunk: reasoning, text and tool-call fragments, then its end."""
    choice = _choice(line)
    if choice is None:
        return None
    delta = choice.get("delta")
    if delta:
        if not isinstance(delta, dict):
            raise InstanceError(INVALID_ANSWER, detail="a delta that is not an object")
        for name in REASONING_FIELDS:
            piece = delta.get(name)
            if piece:
                out.append((THINKING, _text(piece, "reasoning")))
                break  # a server that sends two names sends the same text twice
        piece = delta.get("content")
        if piece:
            out.append((CONTENT, _text(piece, "content")))
        fragments = delta.get("tool_calls")
        if fragments:
            if not isinstance(fragments, list):
                raise InstanceError(INVALID_ANSWER, detail="tool_calls that is not a list")
            for fragment in fragments:
                out.append((TOOL, _fragment(fragment)))
    return _end(choice)


def _fragment(fragment: Any) -> tuple[int, str | None, str | None, str | None]:
    """One piece of a tool call: `(index, id, name, arguments text)`."""
    if not isinstance(fragment, dict):
        raise InstanceError(INVALID_ANSWER, detail="a tool call that is not an object")
    index = fragment.get("index", 0)
    function = fragment.get("function") or {}
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(function, dict):
        raise InstanceError(INVALID_ANSWER, detail="a malformed tool call")
    call_id, name = fragment.get("id"), function.get("name")
    arguments = function.get("arguments")
    if isinstance(arguments, dict | list):  # a server that sends them parsed, as Ollama does
        arguments = orjson.dumps(arguments).decode()
    return (
        index,
        call_id if isinstance(call_id, str) else None,
        name if isinstance(name, str) else None,
        arguments if isinstance(arguments, str) else None,
    )


def decode_completion(line: bytes, out: list) -> str | None:
    """One text_completion chunk: its text, then its end."""
    choice = _choice(line)
    if choice is None:
        return None
    piece = choice.get("text")
    if piece:
        out.append((CONTENT, _text(piece, "text")))
    return _end(choice)


def model_ids(answer: Any) -> list[str]:
    """Check the answer of /models: `{"data": [{"id": ...}, ...]}`."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise nonsense("models: not an object with a list of data")
    ids = []
    for entry in data:
        name = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_MODEL_NAME_CHARS:
            raise nonsense("models: a model without a usable id")
        if not name.isprintable() or " " in name:
            raise nonsense("models: a model without a usable id")
        ids.append(name)
    return ids


class OpenAIProtocol(WireProtocol):
    """A server speaking the OpenAI API; `capabilities`: the operator's, by model id.

    `passed`: options the operator allowed (ALLOWED_OPTIONS) that go out as top-level
    fields under their own names, as this wire's servers take their extras.
    """

    api = "openai"
    sse = True

    def __init__(
        self, capabilities: dict[str, list[str]] | None = None, passed: frozenset[str] = frozenset()
    ) -> None:
        self.capabilities = capabilities or {}
        self.passed = passed

    def models(self, client: InstanceClient) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "family": None,
                "parameter_size": None,
                "quantization_level": None,
                "size": None,
                "modified_at": None,
                "capabilities": list(self.capabilities.get(name, ["completion"])),
            }
            for name in model_ids(client.get_json("GET", "/models"))
        ]

    def unsupported_options(self, options: dict[str, Any]) -> list[str]:
        return [n for n in options if n not in OPTION_FIELDS and n not in self.passed]

    def _options(self, body: dict[str, Any], options: dict[str, Any]) -> None:
        for name, value in options.items():
            body[OPTION_FIELDS.get(name, name)] = value

    def chat(self, request: ChatRequest, model: str) -> Prepared:
        body: dict[str, Any] = {
            "model": model,
            "messages": upstream_messages(request.messages, request.system),
            "stream_options": {"include_usage": True},
        }
        self._options(body, request.options)
        if request.tools:
            body["tools"] = request.tools
        if request.think is not None:
            body["chat_template_kwargs"] = {"enable_thinking": request.think}
        return Prepared("/chat/completions", body, decode_chat)

    def completion(self, request: CompletionRequest, model: str) -> Prepared:
        body: dict[str, Any] = {
            "model": model,
            "prompt": request.prompt,
            "stream_options": {"include_usage": True},
        }
        if request.suffix is not None:
            body["suffix"] = request.suffix
        self._options(body, request.options)
        return Prepared("/completions", body, decode_completion)
