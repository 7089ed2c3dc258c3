"""Ollama's protocol (``/api/*``): its endpoints, and an answer turned into NDJSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .answer import CRASH_ERROR, Answer
from .fields import DevHttpError, field, knobs
from .models import (
    MODELS,
    MODIFIED_AT,
    DemoModel,
    canonical_name,
    chat_prompt_tokens,
    chat_reply,
    count_tokens,
    generate_reply,
    thinking_for,
)

if TYPE_CHECKING:
    from .server import DevHandler, Route

VERSION = "0.0.0-dev"
REGISTRY = "registry.ollama.ai/library/"
PREFIX = "/api/"
FAILABLE = frozenset({"/api/chat", "/api/generate", "/api/show", "/api/tags"})
THINK_LEVELS = ("low", "medium", "high")
NDJSON = "application/x-ndjson"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))  # never 0: clients divide by durations


def error_body(err: DevHttpError) -> dict[str, Any]:
    """Ollama's error shape (also the dev endpoints')."""
    return {"error": err.message}


def _model(handler: DevHandler, body: dict[str, Any]) -> DemoModel:
    name = field(body, "model", str, "")
    if not name.strip():
        raise DevHttpError(400, "model is required")
    model = MODELS.get(canonical_name(name))
    if model is None:
        raise DevHttpError(404, f'model "{name}" not found, try pulling it first')
    handler.server.state.use(model.name)
    return model


def _paced(handler: DevHandler, body: dict[str, Any], answer: Answer) -> Answer:
    """Set the answer's pace from ``options`` (other options are accepted and ignored)."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise DevHttpError(400, "options must be an object")
    answer.pace(*knobs(opts, "options."), handler.server.token_delay)
    return answer


def _lines(answer: Answer, chat: bool, how: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The answer as Ollama's lines: pieces, then tool calls or the crash, then ``done``."""

    def line(piece: str, **extra: Any) -> dict[str, Any]:
        head = {"model": answer.model.name, "created_at": _now()}
        if chat:
            return {**head, "message": {"role": "assistant", "content": piece, **extra}}
        return {**head, "response": piece}

    for kind, piece in answer.pieces():
        yield {**(line("", thinking=piece) if kind == "thinking" else line(piece)), "done": False}
    if answer.crashes:
        yield {"error": how.get("error", CRASH_ERROR)}
        return
    if answer.tool_calls:
        yield {**line("", tool_calls=answer.tool_calls), "done": False}
    if how.get("skip_done"):
        return
    took = answer.took()
    yield {
        **line(""),
        "done": True,
        "done_reason": "stop",
        "total_duration": _ns(took),
        "load_duration": _ns(0),
        "prompt_eval_count": answer.prompt_tokens,
        "prompt_eval_duration": _ns(0),
        "eval_count": answer.completion_tokens(),
        "eval_duration": _ns(took),
    }


def _respond(handler: DevHandler, body: dict[str, Any], answer: Answer, chat: bool) -> None:
    """Stream the answer as NDJSON, or send it whole when ``stream`` is false."""
    _paced(handler, body, answer)
    stream = field(body, "stream", bool, True)
    how = handler.server.state.misbehaviour()
    lines = _lines(answer, chat, how)
    if stream:
        frames = (json.dumps(obj).encode() + b"\n" for obj in lines)
        return handler.stream(frames, NDJSON, float(how.get("linger", 0)))
    *parts, final = list(lines)
    if "error" in final:
        raise DevHttpError(500, final["error"])
    if not chat:
        final["response"] = "".join(p["response"] for p in parts)
    else:
        final["message"]["content"] = "".join(p["message"]["content"] for p in parts)
        if answer.thinking:
            final["message"]["thinking"] = "".join(p["message"].get("thinking", "") for p in parts)
        if answer.tool_calls:
            final["message"]["tool_calls"] = answer.tool_calls
    handler.send_json(200, final)


# --- endpoints: each gets the parsed JSON body (None for GET) ---


def root(handler: DevHandler, _body: Any) -> None:
    handler.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")


def version(handler: DevHandler, _body: Any) -> None:
    handler.send_json(200, {"version": VERSION})


def tags(handler: DevHandler, _body: Any) -> None:
    how = handler.server.state.misbehaviour()
    if "tags" in how:
        return handler.send_json(200, how["tags"])
    handler.send_json(200, {"models": [m.tag() for m in MODELS.values()]})


def ps(handler: DevHandler, _body: Any) -> None:
    """The models used within KEEP_ALIVE seconds, as Ollama lists what it has in memory."""
    models = []
    for name, left in handler.server.state.loaded().items():
        tag, until = MODELS[name].tag(), datetime.now(UTC) + timedelta(seconds=left)
        expires = until.isoformat(timespec="seconds").replace("+00:00", "Z")
        models.append({**tag, "expires_at": expires, "size_vram": tag["size"]})
    handler.send_json(200, {"models": models})


def show(handler: DevHandler, body: dict[str, Any]) -> None:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DevHttpError(400, "model is required")
    model = MODELS.get(canonical_name(name))
    if model is None:
        raise DevHttpError(404, f"model '{name}' not found")
    how = handler.server.state.misbehaviour()
    if "show" in how:
        return handler.send_json(200, how["show"])
    handler.send_json(
        200,
        {
            "details": model.details(),
            "capabilities": list(model.capabilities),
            "model_info": {},
            "modified_at": MODIFIED_AT,
        },
    )


def chat(handler: DevHandler, body: dict[str, Any]) -> None:
    model = _model(handler, body)
    messages = field(body, "messages", list, [])
    if not all(isinstance(m, dict) for m in messages):
        raise DevHttpError(400, "messages must be a list of objects")
    tools = field(body, "tools", list, [])
    if tools and "tools" not in model.capabilities:
        raise DevHttpError(400, f"{REGISTRY}{model.name} does not support tools")
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise DevHttpError(400, "think must be a boolean or one of low, medium, high")
    thinks = "thinking" in model.capabilities
    if think and not thinks:
        raise DevHttpError(400, f'"{REGISTRY}{model.name}" does not support thinking')
    text, calls = chat_reply(model, messages, bool(tools))
    thinking = thinking_for(messages) if thinks and think is not False else ""
    answer = Answer(model, text, chat_prompt_tokens(messages), calls, thinking)
    _respond(handler, body, answer, chat=True)


def generate(handler: DevHandler, body: dict[str, Any]) -> None:
    model = _model(handler, body)
    prompt, suffix, system = (field(body, k, str, "") for k in ("prompt", "suffix", "system"))
    if suffix and "insert" not in model.capabilities:
        raise DevHttpError(400, f"{REGISTRY}{model.name} does not support insert")
    text = generate_reply(model, prompt, suffix, system)
    answer = Answer(model, text, count_tokens(f"{system} {prompt} {suffix}"))
    _respond(handler, body, answer, chat=False)


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): root,
    ("HEAD", "/"): root,
    ("GET", "/api/version"): version,
    ("GET", "/api/tags"): tags,
    ("GET", "/api/ps"): ps,
    ("POST", "/api/show"): show,
    ("POST", "/api/chat"): chat,
    ("POST", "/api/generate"): generate,
}
