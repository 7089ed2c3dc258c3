"""The app's long-lived services, built once by the factory."""

from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from marshmallow import Schema

from .auth import TokenVerifier
from .catalog import ModelCatalog
from .chatstore import ChatStore
from .coordination import Coordinator
from .pool import InstancePool
from .schemas import Limits


@dataclass
class Site:
    """What the endpoints need, so that views stay thin."""

    tokens: TokenVerifier
    limits: Limits
    chats: ChatStore
    catalog: ModelCatalog
    pool: InstancePool
    coordinator: Coordinator
    tools: Any = None  # the tool registry, or None for no tools
    tool_timeout: float = 5.0
    max_tool_rounds: int = 5
    auto_create_users: bool = True
    max_chats: int = 10_000
    retry_after: int = 2
    _schemas: dict[type, Schema] = field(default_factory=dict)

    def schema(self, schema_class: type[Schema]) -> Schema:
        """Return one shared instance per schema: loading keeps no state on it."""
        instance = self._schemas.get(schema_class)
        if instance is None:
            instance = self._schemas[schema_class] = schema_class(limits=self.limits)
        return instance


def current_site() -> Site:
    """Return the running app's services."""
    return current_app.extensions["chatsite"]
