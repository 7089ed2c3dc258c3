"""The set of tools offered to the model, loaded from config and run safely.

`run` turns every failure into an error result the model can read, so a bad tool call
costs one round of the conversation, never the request.
"""

import copy
import importlib
import json
import logging
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import defaults
from .arguments import ArgumentError, bind_arguments
from .builtin import BUILTIN_TOOLS
from .child import resolve
from .context import ToolContext, utc_now
from .processes import ToolProcessError, ToolsBusy, ToolTimeout, shared_pool
from .schema import ToolSpec, tool_spec
from .wire import MAX_RESULT_CHARS, ToolCall, cap_result

log = logging.getLogger(__name__)

__all__ = ["MAX_RESULT_CHARS", "ToolConfigError", "ToolRegistry", "ToolResult", "cap_result"]

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


class ToolRegistry:
    """Tools by name, with their schemas; built once per app.

    Tools run in this process's pool of `processes` tool processes, which open the database
    at `database_url` themselves when a tool needs it.
    """

    def __init__(
        self,
        functions: Iterable[Callable[..., object]] = (),
        processes: int = defaults.TOOL_PROCESSES,
        database_url: str | None = None,
    ) -> None:
        if processes < 1:
            raise ToolConfigError(f"TOOL_PROCESSES must be at least 1, not {processes}")
        self._tools: dict[str, _Tool] = {}
        self.processes = processes
        self.database_url = database_url
        for fn in functions:
            self.add(fn)

    def add(self, fn: Callable[..., object]) -> None:
        """Register a tool; TypeError for a bad signature or a function a tool process
        cannot import, ToolConfigError for a taken name."""
        spec = tool_spec(fn)
        _check_importable(fn)
        if spec.name in self._tools:
            raise ToolConfigError(f"a tool named {spec.name!r} is already registered")
        self._tools[spec.name] = _Tool(fn, spec)

    @classmethod
    def from_paths(
        cls,
        paths: list[str] | None,
        processes: int = defaults.TOOL_PROCESSES,
        database_url: str | None = None,
    ) -> "ToolRegistry":
        """Load tools from `module:function` paths; None means the built-in set."""
        if paths is None:
            return cls(BUILTIN_TOOLS, processes, database_url)
        if not isinstance(paths, list | tuple):
            raise ToolConfigError(f"TOOLS must be a list of {PATH_FORMAT} paths, not {paths!r}")
        registry = cls((), processes, database_url)
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
        """The `tools` of a chat request, one shape on every wire (copies: callers may change
        them)."""
        return [copy.deepcopy(tool.spec.schema) for tool in self._tools.values()]

    def run(self, name: str, arguments: object, context: ToolContext, timeout: float) -> ToolResult:
        """Run one tool call from the model; failures become error results.

        Only a BaseException that is not an Exception (a drain, a greenlet kill) escapes:
        it ends the request, and the tool's process is killed on the way.
        """
        started = time.monotonic()
        try:
            result = self._run(name, arguments, context, timeout)
        except Exception:  # a bug here must not cost the request: report it to the model
            log.exception("could not run tool %r", _shown_name(name))
            result = ToolResult(_shown_name(name), "error: internal error running the tool", False)
        log.info(
            "tool %r %s in %.3f s",
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
            shown = json.dumps(_shown_name(name), ensure_ascii=False)
            return _error(name, f"unknown tool {shown}; available tools: {available}")
        try:
            kwargs = bind_arguments(tool.spec, arguments)
        except ArgumentError as exc:
            return _error(name, f"invalid arguments for {name}: {exc}")
        return self._call(tool, kwargs, context, timeout)

    def _call(
        self, tool: _Tool, kwargs: dict[str, Any], context: ToolContext, timeout: float
    ) -> ToolResult:
        """Run a checked call in a tool process; the pool kills it past `timeout`."""
        name = tool.spec.name
        call = ToolCall(
            module=tool.fn.__module__,
            qualname=tool.fn.__qualname__,
            kwargs=kwargs,
            user_id=context.user_id,
            transcripts=context.transcripts,
            database_url=self.database_url,
            now=None if context.now is utc_now else context.now(),
        )
        try:
            reply = shared_pool(self.processes).run(call, timeout)
        except ToolTimeout:
            log.warning("tool %s timed out after %g s; its process was killed", name, timeout)
            return _error(name, f"tool timed out after {timeout:g} s")
        except ToolsBusy as exc:
            log.warning("tool %s not run: %s", name, exc)
            return _error(name, f"the server is too busy to run tools now ({exc})")
        except ToolProcessError as exc:
            log.warning("tool %s failed: %s", name, exc)
            return _error(name, f"tool failed: {exc}")
        if reply.error is not None:
            # Indented: an exception's text may hold the model's arguments, newlines included.
            trace = textwrap.indent(reply.traceback or "", "    | ")
            log.warning("tool %s failed: %r\n%s", name, reply.error, trace)
            return _error(name, f"tool failed: {reply.error}")
        return ToolResult(name, cap_result(reply.content), True)


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
    processes = config.get("TOOL_PROCESSES", defaults.TOOL_PROCESSES)
    return ToolRegistry.from_paths(value, int(processes), config.get("DATABASE_URL"))


def _check_importable(fn: Callable[..., object]) -> None:
    """A tool process finds the function by its import path: it must be reachable by it."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    try:
        found = resolve(module, qualname) if module and "<" not in qualname else None
    except (ImportError, AttributeError):
        found = None
    if found is not fn:
        raise TypeError(
            f"{qualname or fn!r}: a tool must be a function defined at the top level of an "
            "importable module (tools run in a separate process that imports them)"
        )


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
