"""The bodies of Ollama's /api/chat and /api/generate, built from a validated request."""

from typing import Any

# What the model sees of a saved message: no timestamps or local flags such as `incomplete`.
UPSTREAM_FIELDS = ("role", "content", "tool_calls", "tool_name", "images", "thinking")


def upstream_messages(messages: list[dict], system: str) -> list[dict]:
    """The conversation for the model: the system prompt first, then the messages."""
    prepared = [{"role": "system", "content": system}] if system else []
    for message in messages:
        prepared.append({k: message[k] for k in UPSTREAM_FIELDS if k in message})
    return prepared


def chat_payload(
    model: str,
    messages: list[dict],
    system: str,
    options: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    think: bool | None = None,
) -> dict[str, Any]:
    """The body of /api/chat; `think` None leaves thinking to the model's default."""
    payload: dict[str, Any] = {"model": model, "messages": upstream_messages(messages, system)}
    if options is not None:
        payload["options"] = options
    if tools:
        payload["tools"] = tools
    if think is not None:
        payload["think"] = think
    return payload


def generate_payload(
    model: str, prompt: str, suffix: str | None = None, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The body of /api/generate; a suffix asks for fill-in-the-middle."""
    payload: dict[str, Any] = {"model": model, "prompt": prompt}
    if suffix is not None:
        payload["suffix"] = suffix
    if options is not None:
        payload["options"] = options
    return payload
