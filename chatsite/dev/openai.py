"""The OpenAI API (``/v1/*``): its endpoints, and an answer turned into server-sent events.

Built to the agreed spec of the dev instance's OpenAI mode: streamed ``chat.completion.chunk``
and ``text_completion`` events, tool calls as argument fragments, a usage chunk on request,
``data: [DONE]``, errors as ``{"error": {"message", "type", "code"}}``; and misbehaviour that
real OpenAI-compatible servers show (other reasoning field names, repeated ids, one index for
every call, broken arguments, no sentinel).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .answer import CRASH_ERROR, Answer
from .fields import DevHttpError, field, knobs
from .models import (
    MODELS,
    MODIFIED_AT,
    DemoModel,
    chat_prompt_tokens,
    chat_reply,
    count_tokens,
    generate_reply,
    thinking_for,
)

if TYPE_CHECKING:
    from .server import DevHandler, Route

PREFIX = "/v1/"
FAILABLE = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions"})
SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
OWNER = "chatsite-dev"
CREATED = int(datetime.fromisoformat(MODIFIED_AT).timestamp())
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
ARGUMENTS_PIECE = 3  # characters of a tool call's arguments per fragment: splits land anywhere
NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p")
INTEGERS = ("seed", "top_k")


def error_body(err: DevHttpError) -> dict[str, Any]:
    """OpenAI's error shape; ``code`` is the HTTP status unless the error names one."""
    kind = err.kind or (
        "internal_error"
        if err.status >= 500
        else "rate_limit_error"
        if err.status == 429
        else "invalid_request_error"
    )
    return {"error": {"message": err.message, "type": kind, "code": err.code or err.status}}


def authorize(handler: DevHandler) -> None:
    """With an API key set, let only ``Authorization: Bearer KEY`` through."""
    key = handler.server.api_key
    if key is None:
        return
    given = handler.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(given, f"Bearer {key}".encode()):
        raise DevHttpError(
            401, "Incorrect API key provided", "invalid_api_key", "invalid_request_error"
        )


@dataclass(frozen=True)
class _Wanted:
    """What a request asks of its answer's frames, beside the answer itself."""

    model: str  # the model's id on this wire
    stream: bool
    max_tokens: int | None
    include_usage: bool


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _model(handler: DevHandler, body: dict[str, Any]) -> DemoModel:
    name = field(body, "model", str, "")
    if not name.strip():
        raise DevHttpError(400, "model is required")
    model = next((m for m in MODELS.values() if m.bare_name == name), None)
    if model is None:
        raise DevHttpError(404, f"The model `{name}` does not exist.", "model_not_found")
    handler.server.state.use(model.name)
    return model


def _wanted(handler: DevHandler, body: dict[str, Any], answer: Answer) -> _Wanted:
    """Check the options (sampling ones are then ignored), pace the answer by the dev knobs,
    and return what shapes its frames."""
    for key in NUMBERS:
        field(body, key, (int, float), None)
    for key in INTEGERS:
        field(body, key, int, None)
    field(body, "repeat_penalty", (int, float), None)
    stop = body.get("stop")
    if not (stop is None or isinstance(stop, str) or _strings(stop)):
        raise DevHttpError(400, "stop must be a string or a list of strings")
    max_tokens = field(body, "max_tokens", int, None)
    if max_tokens is not None and max_tokens < 1:
        raise DevHttpError(400, "max_tokens must be at least 1")
    stream_options = field(body, "stream_options", dict, {})
    answer.pace(*knobs(body), handler.server.token_delay)
    return _Wanted(
        answer.model.bare_name,
        field(body, "stream", bool, False),
        max_tokens,
        field(stream_options, "include_usage", bool, False),
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat's messages, each tool result given the name of the call it answers."""
    messages = field(body, "messages", list, [])
    names: dict[Any, str] = {}
    named = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DevHttpError(400, "messages must be a list of objects")
        for j, call in enumerate(field(msg, "tool_calls", list, [])):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not (
                isinstance(function.get("name"), str) and isinstance(function.get("arguments"), str)
            ):
                raise DevHttpError(
                    400,
                    f"messages[{i}].tool_calls[{j}].function needs a name and the arguments "
                    "as a JSON string",
                )
            names[call.get("id")] = function["name"]
        if msg.get("role") == "tool":
            msg = {**msg, "tool_name": names.get(msg.get("tool_call_id"))}
        named.append(msg)
    return named


def _calls(answer: Answer, how: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's tool calls on this wire: with ids, their arguments a JSON string."""
    calls = []
    for call in [] if answer.cut else answer.tool_calls:
        arguments = json.dumps(call["function"]["arguments"])
        if how.get("bad_arguments"):
            arguments = arguments[:-1]  # the closing brace is missing: not JSON
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": arguments},
            }
        )
    return calls


def _fragments(calls: list[dict[str, Any]], how: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Split each call's arguments every few characters; id, type and name come first only."""
    for position, call in enumerate(calls):
        index = 0 if how.get("same_index") else position
        arguments = call["function"]["arguments"]
        pieces = [
            arguments[at : at + ARGUMENTS_PIECE] for at in range(0, len(arguments), ARGUMENTS_PIECE)
        ]
        for n, piece in enumerate(pieces or [""]):
            if n == 0 or how.get("repeat_ids"):
                yield {
                    "index": index,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": piece},
                }
            else:
                yield {"index": index, "function": {"arguments": piece}}


def _usage(answer: Answer) -> dict[str, int]:
    completion = answer.completion_tokens()
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
    }


def _finish_reason(answer: Answer, calls: list[dict[str, Any]], how: dict[str, Any]) -> str:
    reason = "length" if answer.cut else "tool_calls" if calls else "stop"
    return how.get("finish_reason", reason)


class _Frames:
    """One answer as events of one object kind: chat chunks or text completions."""

    def __init__(self, answer: Answer, wanted: _Wanted, how: dict[str, Any], chat: bool) -> None:
        self.answer, self.wanted, self.how, self.chat = answer, wanted, how, chat
        self.head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": wanted.model,
        }

    def choice(self, piece: dict[str, Any], finish: str | None = None) -> bytes:
        """A chunk with one choice: a chat ``delta`` or a completion's ``text``."""
        choice = {"delta": piece} if self.chat else {"text": piece.get("content", "")}
        return _event({**self.head, "choices": [{"index": 0, **choice, "finish_reason": finish}]})

    def events(self) -> Iterator[bytes]:
        """Role, pieces, tool call fragments, then the finish, the usage and ``[DONE]``."""
        how, answer = self.how, self.answer
        reasoning = how.get("reasoning_field", REASONING_FIELDS[0])
        if self.chat:
            yield self.choice({"role": "assistant", "content": ""})
        for kind, piece in answer.pieces(self.wanted.max_tokens):
            yield self.choice({reasoning: piece} if kind == "thinking" else {"content": piece})
        if answer.crashes:
            message = how.get("error", CRASH_ERROR)
            yield _event({"error": {"message": message, "type": "internal_error", "code": 500}})
            return
        calls = _calls(answer, how)
        for fragment in _fragments(calls, how):
            yield self.choice({"tool_calls": [fragment]})
        if how.get("skip_done"):
            return
        yield self.choice({}, _finish_reason(answer, calls, how))
        if self.wanted.include_usage:
            yield _event({**self.head, "choices": [], "usage": _usage(answer)})
        if not how.get("skip_sentinel"):
            yield DONE

    def whole(self) -> dict[str, Any]:
        """The answer as one ``chat.completion`` or ``text_completion`` object."""
        said: dict[str, list[str]] = {"thinking": [], "content": []}
        for kind, piece in self.answer.pieces(self.wanted.max_tokens):
            said[kind].append(piece)
        if self.answer.crashes:
            raise DevHttpError(500, self.how.get("error", CRASH_ERROR))
        calls = _calls(self.answer, self.how)
        finish = _finish_reason(self.answer, calls, self.how)
        text = "".join(said["content"])
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if said["thinking"]:
                reasoning = self.how.get("reasoning_field", REASONING_FIELDS[0])
                message[reasoning] = "".join(said["thinking"])
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.head, "object": kind, "choices": [choice], "usage": _usage(self.answer)}


def _respond(handler: DevHandler, frames: _Frames) -> None:
    """Stream the answer as server-sent events, or send it whole when ``stream`` is false."""
    if not frames.wanted.stream:
        return handler.send_json(200, frames.whole())
    handler.stream(frames.events(), SSE, float(frames.how.get("linger", 0)))
    if frames.answer.crashes:
        handler.close_connection = True  # a crashed server drops the connection


# --- endpoints: each gets the parsed JSON body (None for GET) ---


def models(handler: DevHandler, _body: Any) -> None:
    data = [
        {"id": m.bare_name, "object": "model", "created": CREATED, "owned_by": OWNER}
        for m in MODELS.values()
    ]
    handler.send_json(200, {"object": "list", "data": data})


def chat_completions(handler: DevHandler, body: dict[str, Any]) -> None:
    """Chat; models without the tools capability ignore ``tools``, as sampling options are."""
    model = _model(handler, body)
    messages = _messages(body)
    tools = field(body, "tools", list, [])
    template = field(body, "chat_template_kwargs", dict, {})
    thinks = "thinking" in model.capabilities and field(template, "enable_thinking", bool, True)
    text, calls = chat_reply(model, messages, bool(tools))
    thinking = thinking_for(messages) if thinks else ""
    answer = Answer(model, text, chat_prompt_tokens(messages), calls, thinking)
    wanted = _wanted(handler, body, answer)
    _respond(handler, _Frames(answer, wanted, handler.server.state.misbehaviour(), chat=True))


def completions(handler: DevHandler, body: dict[str, Any]) -> None:
    """Complete a prompt; ``suffix`` (fill in the middle) only for models that can insert."""
    model = _model(handler, body)
    prompt, suffix = field(body, "prompt", str, ""), field(body, "suffix", str, "")
    if suffix and "insert" not in model.capabilities:
        raise DevHttpError(400, f"model `{model.bare_name}` does not support suffix")
    answer = Answer(
        model, generate_reply(model, prompt, suffix, ""), count_tokens(f"{prompt} {suffix}")
    )
    wanted = _wanted(handler, body, answer)
    _respond(handler, _Frames(answer, wanted, handler.server.state.misbehaviour(), chat=False))


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/v1/models"): models,
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
}
