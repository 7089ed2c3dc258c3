"""The dev instance's demo models and what they answer, whatever the wire.

Answers are computed from the input, never sampled, so tests can assert exact output. Nothing
here knows Ollama's or OpenAI's frames: the protocol modules turn these texts into them.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

MODIFIED_AT = "2026-01-01T00:00:00Z"
TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")  # whitespace stays attached: "".join(pieces) == text
# `call NAME {args}`; NAME may be a JSON string, to test names no real tool has.
CALL_RE = re.compile(r'\bcall\s+("(?:[^"\\]|\\.)*"|[A-Za-z_][\w.-]*)\s*')
SAY_RE = re.compile(r'\bsay "([^"]*)"')  # what tooler says before its tool calls


@dataclass(frozen=True)
class DemoModel:
    """A canned model: its answers are computed from the input, never sampled."""

    name: str
    family: str
    capabilities: tuple[str, ...]
    token_delay: float = 0.0
    crashes: bool = False  # says three pieces, then an error: a crash mid-stream

    @property
    def bare_name(self) -> str:
        """The name without its ``:latest`` tag: the model's id on the OpenAI wire."""
        return self.name.removesuffix(":latest")

    def details(self) -> dict[str, Any]:
        return {
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": "1B",
            "quantization_level": "Q4_0",
        }

    def tag(self) -> dict[str, Any]:
        """The model's /api/tags entry; size and digest are derived from the name so are stable."""
        digest = hashlib.sha256(self.name.encode()).hexdigest()
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": MODIFIED_AT,
            "size": 600_000_000 + int(digest[:6], 16),
            "digest": digest,
            "details": self.details(),
        }


MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel("echo:latest", "echo", ("completion",)),
        DemoModel("coder:latest", "coder", ("completion", "insert")),
        DemoModel("tooler:latest", "tooler", ("completion", "tools")),
        DemoModel("slow:latest", "echo", ("completion",), token_delay=0.05),
        DemoModel("broken:latest", "echo", ("completion",), crashes=True),
        DemoModel("thinker:latest", "thinker", ("completion", "thinking")),
    )
}


def canonical_name(name: str) -> str:
    """Ollama treats a name without a tag as ``:latest``; do the same so lookups agree."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Find every ``call NAME {json}``; the JSON is decoded properly so nested braces work."""
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while match := CALL_RE.search(text, pos):
        args: dict[str, Any] = {}
        pos = match.end()
        if text.startswith("{", pos):
            with suppress(json.JSONDecodeError):
                args, pos = decoder.raw_decode(text, pos)
        name = match.group(1)
        if name.startswith('"'):
            with suppress(json.JSONDecodeError):
                name = json.loads(name)
        else:
            name = name.rstrip(".-")
        calls.append({"function": {"name": name, "arguments": args}})
    return calls


def _text(msg: dict[str, Any]) -> str:
    return msg.get("content") if isinstance(msg.get("content"), str) else ""


def chat_reply(
    model: DemoModel, messages: list[dict[str, Any]], tools_offered: bool
) -> tuple[str, list[dict[str, Any]]]:
    """Return (text, tool_calls) for a chat, deterministically, so tests can assert exact output.

    A tool result names its tool in ``tool_name`` (or ``name``); the OpenAI wire adds it.
    """
    users = [m for m in messages if m.get("role") == "user"]
    last_user = _text(users[-1]) if users else ""
    if "tools" in model.capabilities:
        trailing: list[dict[str, Any]] = []
        for msg in reversed(messages):
            if msg.get("role") != "tool":
                break
            trailing.insert(0, msg)
        if trailing:
            return "; ".join(
                f"Tool {m.get('tool_name') or m.get('name') or '?'} said: {_text(m)}"
                for m in trailing
            ), []
        calls = parse_tool_calls(last_user) if tools_offered else []
        if calls:
            said = SAY_RE.search(last_user)
            return said.group(1) if said else "", calls
    system = messages[0] if messages and messages[0].get("role") == "system" else None
    prefix = f"[{_text(system)}] " if system is not None else ""
    return f"{prefix}You said: {last_user}", []


def thinking_for(messages: list[dict[str, Any]]) -> str:
    """What ``thinker`` thinks before it answers: about the last user message."""
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    return f"The user wrote {users[-1]['content'] if users else ''!r}; I will echo it. "


def generate_reply(model: DemoModel, prompt: str, suffix: str, system: str) -> str:
    """Return a completion: coder continues or fills in, the others echo."""
    if "insert" in model.capabilities:
        if suffix:
            return f"<fill between {prompt[-20:]!r} and {suffix[:20]!r}>"
        return f"continuing: {prompt}"
    return f"[{system}] {prompt}" if system else prompt


def count_tokens(text: str) -> int:
    """Count a prompt's tokens as the demo models split their answers."""
    return len(TOKEN_RE.findall(text))


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Count a chat's prompt tokens: the words of every text message."""
    return count_tokens(" ".join(_text(m) for m in messages if isinstance(m.get("content"), str)))
