"""Check the model's arguments against a tool's schema before the tool ever runs.

Models get arguments wrong; a precise message lets the model correct itself, and a tool
never has to defend against a string where it declared an int.
"""

import json
import logging
import math
from typing import Any

from .schema import ToolSpec

log = logging.getLogger(__name__)

MAX_SHOWN_VALUE_CHARS = 40
MAX_ARGUMENT_DEPTH = 32  # no schema goes deeper than an object holding a list of scalars
TOO_DEEP = f"arguments are nested too deeply (more than {MAX_ARGUMENT_DEPTH} levels)"


class ArgumentError(ValueError):
    """The arguments do not fit the tool's schema; the message says what is wrong."""


def bind_arguments(spec: ToolSpec, arguments: object) -> dict[str, Any]:
    """Return the keyword arguments to call the tool with, or raise ArgumentError."""
    if not isinstance(arguments, dict):
        raise ArgumentError(f"arguments must be a JSON object, not {_kind(arguments)}")
    if too_deep(arguments):
        raise ArgumentError(TOO_DEEP)
    properties = spec.properties
    problems: list[str] = []
    unexpected = [key for key in arguments if key not in properties]
    if unexpected:
        listed = ", ".join(f'"{key}"' for key in unexpected)
        expected = ", ".join(properties) or "none"
        problems.append(f"unexpected argument {listed} (expected: {expected})")
    bound: dict[str, Any] = {}
    for name, prop in properties.items():
        if name not in arguments:
            if name in spec.required:
                problems.append(f'missing required argument "{name}"')
            elif name in spec.none_if_missing:
                bound[name] = None
            continue
        value = arguments[name]
        if value is None and name in spec.nullable:
            bound[name] = None
            continue
        try:
            bound[name] = _typed(value, prop, f'argument "{name}"')
        except ArgumentError as exc:
            problems.append(str(exc))
    if problems:
        raise ArgumentError("; ".join(problems))
    return bound


def too_deep(value: object, limit: int = MAX_ARGUMENT_DEPTH) -> bool:
    """Whether lists and objects nest more than `limit` levels (checked without recursion:
    a model can send thousands of levels, and encoding them again would fail)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _typed(value: object, prop: dict[str, Any], label: str) -> Any:
    """Return the value if it has the schema's type (an int becomes a float for "number")."""
    kind = prop["type"]
    if kind == "string" and isinstance(value, str):
        checked: Any = value
    elif kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        checked = value
    elif kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            checked = float(value)
        except OverflowError:
            raise ArgumentError(f"{label} is too large a number") from None
        if not math.isfinite(checked):
            raise ArgumentError(f"{label} must be a finite number")
    elif kind == "boolean" and isinstance(value, bool):
        checked = value
    elif kind == "array" and isinstance(value, list):
        return [_typed(item, prop["items"], f"{label} item {i}") for i, item in enumerate(value)]
    else:
        got = _kind(value) if value is None else f"{_kind(value)} ({_shown(value)})"
        raise ArgumentError(f"{label} must be {_expected(prop)}, not {got}")
    if "enum" in prop and checked not in prop["enum"]:
        raise ArgumentError(f"{label} must be {_expected(prop)}, not {_shown(value)}")
    return checked


def _expected(prop: dict[str, Any]) -> str:
    """Say in words what the schema accepts."""
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(value) for value in prop["enum"])
    kind = prop["type"]
    if kind == "array":
        item = _expected(prop["items"])
        return f"an array whose items are each {item}"
    return {"integer": "an integer", "number": "a number"}.get(kind, f"a {kind}")


def _kind(value: object) -> str:
    """Name the JSON type of a value, as the model would know it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _shown(value: object) -> str:
    """A short rendering of the offending value."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_SHOWN_VALUE_CHARS:
        text = text[: MAX_SHOWN_VALUE_CHARS - 1] + "…"
    return text
