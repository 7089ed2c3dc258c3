"""The app's long-lived services, typed and built in one place from the configuration."""

from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from .auth import TokenVerifier
from .coordination import Coordinator, make_coordinator
from .llm.catalog import ModelCatalog
from .llm.instances import build_instances
from .llm.pool import InstancePool
from .storage.journal import Journal
from .storage.saves import ChatSaves
from .storage.search_index import IndexedTranscripts
from .storage.transcripts import TranscriptStore, make_transcript_store
from .streaming.linelog import make_line_store
from .streaming.linelog.answers import LineLogs
from .titles import TitleWriter
from .tools import ToolRegistry, registry_from_config


@dataclass
class Site:
    """What the endpoints need, so that views stay thin. Defaults live in `defaults.py`."""

    tokens: TokenVerifier
    transcripts: TranscriptStore
    saves: ChatSaves  # /chat's saves, journaled while the database is away
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
    settings_chat_files: int  # chats /settings lists
    titles: TitleWriter | None  # TITLE_MODEL's titles (None: names from first messages)
    retry_after: int
    queue_retry_after: int
    stop_timeout: float
    line_logs: LineLogs  # answers that outlive their client, for /resume
    detached_max: float  # seconds an answer nobody reads goes on


def build_site(config: dict[str, Any]) -> Site:
    """Build the long-lived services; raise on an unsafe or invalid configuration."""
    cooldown = float(config["INSTANCE_COOLDOWN"])
    catalog = ModelCatalog(
        build_instances(config),
        float(config["MODELS_CACHE_SECONDS"]),
        cooldown,
        first_wait=float(config["UPSTREAM_CONNECT_TIMEOUT"]),
    )
    coordinator = make_coordinator(config)
    pool = InstancePool(
        catalog,
        coordinator,
        float(config["INSTANCE_WAIT_TIMEOUT"]),
        cooldown,
        max_queue=int(config["MAX_QUEUE"]),
    )
    titles = None
    if config["TITLE_MODEL"]:
        titles = TitleWriter(pool, config["TITLE_MODEL"], float(config["TITLE_WAIT"]))
    transcripts = IndexedTranscripts(
        make_transcript_store(config["CHAT_STORE"], config["CHAT_DIR"])
    )
    return Site(
        tokens=TokenVerifier(config),
        transcripts=transcripts,
        saves=ChatSaves(transcripts, Journal(config["JOURNAL_DIR"])),
        catalog=catalog,
        coordinator=coordinator,
        pool=pool,
        tools=registry_from_config(config),
        tool_timeout=float(config["TOOL_TIMEOUT"]),
        max_tool_rounds=int(config["MAX_TOOL_ROUNDS"]),
        max_tool_calls=int(config["MAX_TOOL_CALLS_PER_ROUND"]),
        auto_create_users=bool(config["AUTO_CREATE_USERS"]),
        max_chats=int(config["MAX_CHATS_PER_USER"]),
        max_storage=int(config["MAX_STORAGE_PER_USER"]),
        settings_chat_files=int(config["SETTINGS_CHAT_FILES"]),
        titles=titles,
        retry_after=int(config["USER_LOCK_RETRY_AFTER"]),
        queue_retry_after=int(config["QUEUE_RETRY_AFTER"]),
        stop_timeout=float(config["STOP_TIMEOUT"]),
        line_logs=LineLogs(
            make_line_store(config, coordinator),
            float(config["RESUME_KEEP_SECONDS"]),
            int(config["RESUME_KEEP_LINES"]),
        ),
        detached_max=float(config["DETACHED_MAX_SECONDS"]),
    )


def start_background_work(app: Flask) -> None:
    """Start what a worker runs beside its requests (the catalog's refresher, the journal's
    replayer) as it begins serving: gunicorn's post_worker_init. Elsewhere the first request
    starts the refresher, and the first journaled save the replayer."""
    site = app.extensions["chatsite"]
    site.catalog.start()
    site.saves.replayer.start()  # saves an outage left, a dead worker's included


def current_site() -> Site:
    """Return the running app's services."""
    return current_app.extensions["chatsite"]
