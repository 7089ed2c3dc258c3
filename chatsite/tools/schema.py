"""The function-tool schema (one shape on Ollama's wire and the OpenAI API's) built from a
function's signature, type hints and docstring.

Deriving the schema from the code keeps what the model is told and what the server accepts
from drifting apart; anything the schema cannot express is refused at registration.
"""

import inspect
import logging
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

from .context import ToolContext

log = logging.getLogger(__name__)

CONTEXT_PARAMETER = "context"
TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ARGS_HEADERS = ("Args:", "Arguments:", "Parameters:")
ARG_ENTRY = re.compile(r"^(?P<name>\w+)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)$")
SCALAR_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class ToolSpec:
    """A checked tool: its tool schema plus what validating arguments needs beyond it."""

    name: str
    schema: dict[str, Any]
    required: frozenset[str]
    nullable: frozenset[str]
    none_if_missing: frozenset[str]

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        """The parameters' JSON schemas, by name."""
        return self.schema["function"]["parameters"]["properties"]


def function_schema(fn: Callable[..., object]) -> dict[str, Any]:
    """Return the tool's schema; raises TypeError for what it cannot express."""
    return tool_spec(fn).schema


def tool_spec(fn: Callable[..., object]) -> ToolSpec:
    """Check a tool function and describe it; raises TypeError for a bad signature."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise TypeError(f"tool name {name!r} is not a valid identifier")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: no inspectable signature ({exc})") from None
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise TypeError(f"{name}: cannot resolve type hints ({exc})") from None

    parameters = list(signature.parameters.values())
    _check_context_parameter(name, parameters, hints)
    description, arg_docs = parse_docstring(inspect.getdoc(fn))

    properties: dict[str, dict[str, Any]] = {}
    required: list[str] = []
    nullable: set[str] = set()
    none_if_missing: set[str] = set()
    for parameter in parameters[1:]:
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise TypeError(f"{name}: parameter {parameter.name!r} must be passable by keyword")
        if parameter.name not in hints:
            raise TypeError(f"{name}: parameter {parameter.name!r} has no type annotation")
        try:
            prop, is_nullable = _property_schema(hints[parameter.name])
        except TypeError as exc:
            raise TypeError(f"{name}: parameter {parameter.name!r}: {exc}") from None
        if arg_docs.get(parameter.name):
            prop["description"] = arg_docs[parameter.name]
        properties[parameter.name] = prop
        has_default = parameter.default is not parameter.empty
        if is_nullable:
            nullable.add(parameter.name)
            if not has_default:
                none_if_missing.add(parameter.name)
        elif not has_default:
            required.append(parameter.name)

    stray = sorted(set(arg_docs) - set(properties) - {CONTEXT_PARAMETER})
    if stray:
        log.debug("%s: docstring describes unknown parameters %s", name, ", ".join(stray))
    schema = {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }
    return ToolSpec(
        name=name,
        schema=schema,
        required=frozenset(required),
        nullable=frozenset(nullable),
        none_if_missing=frozenset(none_if_missing),
    )


def _check_context_parameter(
    name: str, parameters: list[inspect.Parameter], hints: dict[str, Any]
) -> None:
    """The server passes the context first and positionally; the model never sees it."""
    if not parameters or parameters[0].name != CONTEXT_PARAMETER:
        raise TypeError(f"{name}: the first parameter must be `context: ToolContext`")
    first = parameters[0]
    if first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        raise TypeError(f"{name}: `context` must be a positional parameter")
    annotation = hints.get(CONTEXT_PARAMETER, ToolContext)
    if annotation is not ToolContext:
        raise TypeError(f"{name}: `context` must be annotated as ToolContext")


def _property_schema(annotation: Any) -> tuple[dict[str, Any], bool]:
    """Return the JSON schema of one parameter and whether it may be null (`X | None`)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = typing.get_args(annotation)
        others = [member for member in members if member is not type(None)]
        if len(others) != 1 or len(others) == len(members):
            raise TypeError(f"unsupported union {annotation!r}; only `X | None` is allowed")
        return _value_schema(others[0]), True
    return _value_schema(annotation), False


def _value_schema(annotation: Any) -> dict[str, Any]:
    """Map one supported annotation to its JSON schema."""
    if isinstance(annotation, type) and annotation in SCALAR_TYPES:
        return {"type": SCALAR_TYPES[annotation]}
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = list(typing.get_args(annotation))
        if values and all(isinstance(value, str) for value in values):
            return {"type": "string", "enum": values}
        if values and all(type(value) is int for value in values):
            return {"type": "integer", "enum": values}
        raise TypeError(f"unsupported {annotation!r}: Literal values must be all str or all int")
    if origin is list:
        (item,) = typing.get_args(annotation) or (None,)
        if item is None:
            raise TypeError("a list needs an item type, such as list[str]")
        items = _value_schema(item)
        if items["type"] == "array":
            raise TypeError(f"unsupported {annotation!r}: nested lists")
        return {"type": "array", "items": items}
    raise TypeError(f"unsupported type annotation {annotation!r}")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a cleaned docstring into its first paragraph and its Google-style `Args:`."""
    if not doc:
        return "", {}
    lines = doc.splitlines()
    paragraph: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped and paragraph:
            break
        if stripped in ARGS_HEADERS:
            break
        if stripped:
            paragraph.append(stripped)
    return " ".join(paragraph), _parse_args_section(lines)


def _parse_args_section(lines: list[str]) -> dict[str, str]:
    """Read `name (type): text` entries, with indented continuation lines."""
    described: dict[str, str] = {}
    header_indent: int | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if header_indent is None:
            if stripped in ARGS_HEADERS:
                header_indent = indent
            continue
        if not stripped:
            continue
        if indent <= header_indent:
            break  # the next section, such as Returns:
        if entry_indent is None:
            entry_indent = indent
        match = ARG_ENTRY.match(stripped) if indent == entry_indent else None
        if match:
            current = match["name"]
            described[current] = match["text"].strip()
        elif current is not None:
            described[current] = f"{described[current]} {stripped}".strip()
    return described
