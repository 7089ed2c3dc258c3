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
    from .chatstore import make_chat_store
    from .schemas import Limits
    from .site import Site

    errors.register_error_handlers(app)
    auth.init_app(app)
    db.init_app(app)
    cors.init_app(app)
    cli.init_app(app)
    app.extensions["chatsite"] = Site(
        tokens=auth.verifier(app),
        limits=Limits.from_config(app.config),
        chats=make_chat_store(app.config["CHAT_STORE"], app.config["CHAT_DIR"]),
        auto_create_users=bool(app.config["AUTO_CREATE_USERS"]),
        max_chats=int(app.config["MAX_CHATS_PER_USER"]),
    )

    from .api import create_chat, get_chat, settings, update_settings

    for module in (settings, update_settings, create_chat, get_chat):
        app.register_blueprint(module.bp)
    return app
