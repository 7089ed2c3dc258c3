"""chatsite: the back end of an LLM chat web site."""

import logging
import os
from typing import Any

from flask import Flask

log = logging.getLogger(__name__)


def _resolve_paths(app: Flask) -> None:
    """Put the default database and chat folder in the instance folder."""
    os.makedirs(app.instance_path, exist_ok=True)
    if not app.config.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "chatsite.db")
    if not app.config.get("CHAT_DIR"):
        app.config["CHAT_DIR"] = os.path.join(app.instance_path, "chats")
    if not app.config.get("LOCK_DIR"):
        app.config["LOCK_DIR"] = os.path.join(app.instance_path, "locks")
    secret = app.config.get("JWT_SECRET")
    if secret is not None and not isinstance(secret, str):
        # from_prefixed_env parses JSON, so an all-digit secret arrives as a number.
        app.config["JWT_SECRET"] = str(secret)


def create_app(
    test_config: dict[str, Any] | None = None, instance_path: str | None = None
) -> Flask:
    """Build the application: defaults, instance config, environment, then tests."""
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    app.config.from_object("chatsite.defaults")
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("CHATSITE")
    if test_config:
        app.config.update(test_config)
    _resolve_paths(app)

    from . import auth, cli, cors, db, errors

    errors.register_error_handlers(app)
    auth.init_app(app)
    db.init_app(app)
    cors.init_app(app)
    cli.init_app(app)
    app.extensions["chatsite"] = build_site(app)
    hops = int(app.config["PROXY_HOPS"])
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    from .api import (
        chat,
        create_chat,
        generate,
        get_chat,
        health,
        models,
        settings,
        update_settings,
    )

    endpoints = (settings, update_settings, create_chat, get_chat, models, generate, chat, health)
    for module in endpoints:
        app.register_blueprint(module.bp)
    return app


def build_site(app: Flask):
    """Build the long-lived services from the configuration."""
    from . import auth
    from .catalog import Instance, ModelCatalog, parse_instances
    from .chatstore import make_chat_store
    from .coordination import make_coordinator
    from .pool import InstancePool
    from .schemas import Limits
    from .site import Site
    from .tools import registry_from_config
    from .upstream import OllamaClient

    config = app.config
    instances = [
        Instance(
            url=url,
            max_concurrent=capacity,
            client=OllamaClient(
                url,
                connect_timeout=float(config["UPSTREAM_CONNECT_TIMEOUT"]),
                read_timeout=float(config["UPSTREAM_READ_TIMEOUT"]),
                max_seconds=float(config["UPSTREAM_MAX_SECONDS"]),
                max_line=int(config["UPSTREAM_MAX_LINE_BYTES"]),
                pool_size=max(capacity, 10),
            ),
        )
        for url, capacity in parse_instances(config["CHAT_INSTANCES"])
    ]
    cooldown = float(config["INSTANCE_COOLDOWN"])
    catalog = ModelCatalog(instances, float(config["MODELS_CACHE_SECONDS"]), cooldown)
    coordinator = make_coordinator(config)
    return Site(
        tokens=auth.verifier(app),
        limits=Limits.from_config(config),
        chats=make_chat_store(config["CHAT_STORE"], config["CHAT_DIR"]),
        catalog=catalog,
        coordinator=coordinator,
        pool=InstancePool(catalog, coordinator, float(config["INSTANCE_WAIT_TIMEOUT"]), cooldown),
        tools=registry_from_config(config),
        tool_timeout=float(config["TOOL_TIMEOUT"]),
        max_tool_rounds=int(config["MAX_TOOL_ROUNDS"]),
        auto_create_users=bool(config["AUTO_CREATE_USERS"]),
        max_chats=int(config["MAX_CHATS_PER_USER"]),
        retry_after=int(config["USER_LOCK_RETRY_AFTER"]),
    )
