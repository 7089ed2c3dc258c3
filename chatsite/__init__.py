"""chatsite: the back end of an LLM chat web site."""

import logging
import os
from typing import Any

from flask import Flask, Response

from . import cli, errors, operations
from .api import body, cors
from .api.proxies import TrustedProxyFix, parse_trusted
from .api.routes import BLUEPRINTS
from .site import build_site
from .storage import database

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


def add_security_headers(response: Response) -> Response:
    """Every answer is JSON or NDJSON: browsers must never sniff it into something else."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def create_app(
    test_config: dict[str, Any] | None = None, instance_path: str | None = None
) -> Flask:
    """Build the application: defaults, instance config, environment, then tests."""
    # No static folder: the API serves no files of its own (the docs page serves its assets).
    app = Flask(
        __name__, instance_relative_config=True, instance_path=instance_path, static_folder=None
    )
    app.config.from_object("chatsite.defaults")
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("CHATSITE")
    if test_config:
        app.config.update(test_config)
    _resolve_paths(app)

    errors.register_error_handlers(app)
    operations.init_app(app)  # first: every later hook runs inside the request's record
    app.after_request(add_security_headers)
    database.init_app(app)
    cors.init_app(app)
    cli.init_app(app)
    app.extensions["chatsite"] = build_site(app.config)
    body.init_app(app)  # the request limits
    hops = int(app.config["PROXY_HOPS"])
    if hops:
        trusted = parse_trusted(app.config["FORWARDED_ALLOW_IPS"])
        app.wsgi_app = TrustedProxyFix(app.wsgi_app, hops, trusted)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app
