"""The app's long-lived services, typed and built in one place from the configuration."""

from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from marshmallow import Schema

from .api.schemas import Limits
from .auth import TokenVerifier
from .coordination import Coordinator, make_coordinator
from .llm.catalog import ModelCatalog
from .llm.instances import build_instances
from .llm.pool import InstancePool
from .storage.transcripts import TranscriptStore, make_transcript_store
from .tools import ToolRegistry, registry_from_config


@dataclass
class Site:
    """What the endpoints need, so that views stay thin. Defaults live in `defaults.py`."""

    tokens: TokenVerifier
    limits: Limits
    transcripts: TranscriptStore
    catalog: ModelCatalog
    pool: InstancePool
    coordinator: Coordinator
    tools: ToolRegistry | None  # None or empty: no tools are offered
    tool_timeout: float
    max_tool_rounds: int
    max_tool_calls: int
    auto_create_users: bool
    max_chats: int
    max_storage: int  # bytes of transcripts per user
    retry_after: int
    queue_retry_after: int
    stop_timeout: float
    _schemas: dict[type, Schema] = field(default_factory=dict)

    def schema(self, schema_class: type[Schema]) -> Schema:
        """Return one shared instance per schema: loading keeps no state on it."""
        instance = self._schemas.get(schema_class)
        if instance is None:
            instance = self._schemas[schema_class] = schema_class(limits=self.limits)
        return instance


def build_site(config: dict[str, Any]) -> Site:
    """Build the long-lived services; raise on an unsafe or invalid configuration."""
    cooldown = float(config["INSTANCE_COOLDOWN"])
    catalog = ModelCatalog(build_instances(config), float(config["MODELS_CACHE_SECONDS"]), cooldown)
    coordinator = make_coordinator(config)
    return Site(
        tokens=TokenVerifier(config),
        limits=Limits.from_config(config),
        transcripts=make_transcript_store(config["CHAT_STORE"], config["CHAT_DIR"]),
        catalog=catalog,
        coordinator=coordinator,
        pool=InstancePool(
            catalog,
            coordinator,
            float(config["INSTANCE_WAIT_TIMEOUT"]),
            cooldown,
            max_queue=int(config["MAX_QUEUE"]),
        ),
        tools=registry_from_config(config),
        tool_timeout=float(config["TOOL_TIMEOUT"]),
        max_tool_rounds=int(config["MAX_TOOL_ROUNDS"]),
        max_tool_calls=int(config["MAX_TOOL_CALLS_PER_ROUND"]),
        auto_create_users=bool(config["AUTO_CREATE_USERS"]),
        max_chats=int(config["MAX_CHATS_PER_USER"]),
        max_storage=int(config["MAX_STORAGE_PER_USER"]),
        retry_after=int(config["USER_LOCK_RETRY_AFTER"]),
        queue_retry_after=int(config["QUEUE_RETRY_AFTER"]),
        stop_timeout=float(config["STOP_TIMEOUT"]),
    )


def current_site() -> Site:
    """Return the running app's services."""
    return current_app.extensions["chatsite"]
