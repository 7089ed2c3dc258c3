"""The set of tools offered to the model, loaded from config and run safely.

`run` turns every failure into an error result the model can read, so a bad tool call
costs one round of the conversation, never the request.
"""

import copy
import importlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from .arguments import ArgumentError, bind_arguments
from .builtin import BUILTIN_TOOLS
from .context import ToolContext
from .schema import ToolSpec, tool_spec
from .timeout import ToolTimeout, call_with_timeout

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 16_000
MAX_SHOWN_NAME_CHARS = 100
PATH_FORMAT = "'module:function'"


class ToolConfigError(ValueError):
    """The TOOLS setting names something that cannot be a tool."""


@dataclass(frozen=True)
class ToolResult:
    """What goes back to the model as the tool message."""

    name: str
    content: str
    ok: bool


@dataclass(frozen=True)
class _Tool:
    fn: Callable[..., object]
    spec: ToolSpec


@dataclass(frozen=True)
class _Outcome:
    """A tool's return value as text, or what it raised (crossing back from its thread)."""

    content: str = ""
    error: BaseException | None = None


class ToolRegistry:
    """Tools by name, with their schemas; built once per app."""

    def __init__(self, functions: Iterable[Callable[..., object]] = ()) -> None:
        self._tools: dict[str, _Tool] = {}
        for fn in functions:
            self.add(fn)

    def add(self, fn: Callable[..., object]) -> None:
        """Register a tool; TypeError for a bad signature, ToolConfigError for a taken name."""
        spec = tool_spec(fn)
        if spec.name in self._tools:
            raise ToolConfigError(f"a tool named {spec.name!r} is already registered")
        self._tools[spec.name] = _Tool(fn, spec)

    @classmethod
    def from_paths(cls, paths: list[str] | None) -> "ToolRegistry":
        """Load tools from `module:function` paths; None means the built-in set."""
        if paths is None:
            return cls(BUILTIN_TOOLS)
        if not isinstance(paths, list | tuple):
            raise ToolConfigError(f"TOOLS must be a list of {PATH_FORMAT} paths, not {paths!r}")
        registry = cls()
        for path in paths:
            fn = _load(path)
            try:
                registry.add(fn)
            except TypeError as exc:
                raise ToolConfigError(f"tool {path!r}: bad signature: {exc}") from exc
            except ToolConfigError as exc:
                raise ToolConfigError(f"tool {path!r}: {exc}") from exc
        log.info("tools enabled: %s", ", ".join(registry.names()) or "none")
        return registry

    def names(self) -> list[str]:
        """The tools' names, in registration order."""
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """The `tools` list for Ollama's /api/chat (copies: callers may change them)."""
        return [copy.deepcopy(tool.spec.schema) for tool in self._tools.values()]

    def run(self, name: str, arguments: object, context: ToolContext, timeout: float) -> ToolResult:
        """Run one tool call from the model; never raises, failures become error results."""
        started = time.monotonic()
        try:
            result = self._run(name, arguments, context, timeout)
        except Exception:  # a bug here must not cost the request: report it to the model
            log.exception("could not run tool %r", name)
            result = ToolResult(_shown_name(name), "error: internal error running the tool", False)
        log.info(
            "tool %s %s in %.3f s",
            result.name,
            "ok" if result.ok else "failed",
            time.monotonic() - started,
        )
        return result

    def _run(
        self, name: object, arguments: object, context: ToolContext, timeout: float
    ) -> ToolResult:
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            available = ", ".join(self._tools) or "none"
            return _error(name, f'unknown tool "{_shown_name(name)}"; available tools: {available}')
        try:
            kwargs = bind_arguments(tool.spec, arguments)
        except ArgumentError as exc:
            return _error(name, f"invalid arguments for {name}: {exc}")
        try:
            outcome = call_with_timeout(partial(_invoke, tool.fn, context, kwargs), timeout)
        except ToolTimeout:
            log.warning("tool %s timed out after %g s", name, timeout)
            return _error(name, f"tool timed out after {timeout:g} s")
        if outcome.error is not None:
            exc = outcome.error
            log.warning("tool %s failed", name, exc_info=exc)
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _error(name, f"tool failed: {detail}")
        return ToolResult(name, cap_result(outcome.content), True)


def registry_from_config(config: Mapping[str, Any]) -> ToolRegistry:
    """Build the app's registry from TOOLS: None, a list of paths, or that list as JSON."""
    value = config.get("TOOLS")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ToolConfigError(
                f"TOOLS must be a JSON list of {PATH_FORMAT} paths, not {value!r}"
            ) from None
    return ToolRegistry.from_paths(value)


def cap_result(text: str) -> str:
    """Keep a result within MAX_RESULT_CHARS, saying that it was cut."""
    if len(text) <= MAX_RESULT_CHARS:
        return text
    note = f"\n[truncated: the result was {len(text):,} characters]"
    return text[: MAX_RESULT_CHARS - len(note)] + note


def _invoke(fn: Callable[..., object], context: ToolContext, kwargs: dict[str, Any]) -> _Outcome:
    """Call the tool in its worker thread; a non-str return value becomes JSON."""
    try:
        value = fn(context, **kwargs)
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, default=str)
        return _Outcome(content=value)
    except BaseException as exc:  # handed to the waiting request, which reports it
        return _Outcome(error=exc)


def _load(path: object) -> Callable[..., object]:
    """Import `module:function`, saying exactly what is wrong with a bad path."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ToolConfigError(f"tool {path!r}: expected a {PATH_FORMAT} path")
    module_name, attribute = (part.strip() for part in path.split(":"))
    if not module_name or not attribute:
        raise ToolConfigError(f"tool {path!r}: expected a {PATH_FORMAT} path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ToolConfigError(f"tool {path!r}: module not importable: {exc}") from exc
    except Exception as exc:
        raise ToolConfigError(
            f"tool {path!r}: importing the module failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ToolConfigError(
                f"tool {path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ToolConfigError(
            f"tool {path!r}: {attribute!r} is not callable (it is a {type(target).__name__})"
        )
    return target


def _error(name: object, message: str) -> ToolResult:
    return ToolResult(_shown_name(name), cap_result(f"error: {message}"), False)


def _shown_name(name: object) -> str:
    text = name if isinstance(name, str) else repr(name)
    return text[:MAX_SHOWN_NAME_CHARS]
