"""Tools the server runs for the model during /chat: schemas, a registry, built-ins."""

from .context import ToolContext, utc_now
from .registry import (
    MAX_RESULT_CHARS,
    ToolConfigError,
    ToolRegistry,
    ToolResult,
    registry_from_config,
)
from .schema import function_schema

__all__ = [
    "MAX_RESULT_CHARS",
    "ToolConfigError",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "function_schema",
    "registry_from_config",
    "utc_now",
]
