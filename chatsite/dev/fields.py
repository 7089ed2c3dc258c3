"""Reading request bodies: typed fields and the dev knobs, each wrong value a clear 400."""

from __future__ import annotations

from typing import Any

MAX_TOKEN_DELAY = 5.0
MAX_REPEAT = 10_000
# The knobs in ``options``, as a site in front of this instance must allow them to pass
# (chatsite's ALLOWED_OPTIONS: name -> [min, max]).
KNOBS = {"dev_token_delay": [0, MAX_TOKEN_DELAY], "dev_repeat": [0, MAX_REPEAT]}


class DevHttpError(Exception):
    """An error answered with an HTTP status, in the shape of the wire that was called.

    ``code`` and ``kind`` refine the OpenAI shape (its ``code`` and ``type``); Ollama's has
    only the message.
    """

    def __init__(
        self, status: int, message: str, code: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


def field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """Return ``body[key]``, ``default`` when absent or null; 400 when of another type."""
    value = body.get(key)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        name = " or ".join(k.__name__ for k in kinds)
        raise DevHttpError(400, f"{key} must be of type {name}")
    return value


def knobs(source: dict[str, Any], where: str = "") -> tuple[float | None, int]:
    """Read the dev_* knobs (token delay, repeat) from ``source``; ``where`` prefixes errors."""
    delay = source.get("dev_token_delay")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise DevHttpError(400, f"{where}dev_token_delay must be a number")
        delay = min(float(delay), MAX_TOKEN_DELAY) if delay >= 0 else 0.0  # NaN -> 0
    repeat = source.get("dev_repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int):
        raise DevHttpError(400, f"{where}dev_repeat must be an integer")
    return delay, min(max(repeat, 0), MAX_REPEAT)
