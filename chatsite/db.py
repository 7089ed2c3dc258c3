"""The database: bound from a URL in the factory, one connection per request."""

import logging
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qsl, urlparse

import click
from flask import Flask, current_app, request
from peewee import DatabaseProxy, Model, SqliteDatabase
from playhouse.db_url import connect as connect_url

log = logging.getLogger(__name__)

db = DatabaseProxy()

# Endpoints that open the connection themselves (the health check reports failures).
NO_CONNECT_ENDPOINTS = {"health.healthz"}

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10_000,
    "foreign_keys": 1,
    "synchronous": "normal",
}


class BaseModel(Model):
    """Base for every table; bound to the proxy, so no app is needed to import models."""

    class Meta:
        database = db


def open_database(url: str) -> Any:
    """Open a Peewee database from a URL, tuned for its engine; the URL's own query wins."""
    given = {key for key, _ in parse_qsl(urlparse(url).query)}
    options: dict[str, Any] = {"autoconnect": False}
    scheme, rest = url.split(":", 1)
    if scheme == "sqlite":
        # Reusing connections saves a connect, four pragmas and a WAL close per request.
        scheme, url = "sqlite+pool", f"sqlite+pool:{rest}"
    if scheme.startswith("sqlite"):
        options["pragmas"] = SQLITE_PRAGMAS
        # The pool hands a connection to one thread at a time, then maybe to another.
        options["check_same_thread"] = False
    if scheme.endswith("+pool"):
        # A finite wait for a pooled connection: fail clearly instead of hanging a worker.
        options.update(max_connections=32, stale_timeout=300, timeout=10)
    return connect_url(url, **{k: v for k, v in options.items() if k not in given})


def write_transaction() -> AbstractContextManager:
    """Start a read-then-write transaction; SQLite takes its write lock up front."""
    if isinstance(db.obj, SqliteDatabase):
        return db.atomic("IMMEDIATE")
    return db.atomic()


def create_tables() -> None:
    """Create every table that is missing (idempotent)."""
    from .models import ALL_MODELS

    with db.connection_context():
        db.create_tables(ALL_MODELS, safe=True)


def _connect() -> None:
    if request.endpoint in NO_CONNECT_ENDPOINTS:
        return
    db.connect(reuse_if_open=True)


def _close(_exc: BaseException | None = None) -> None:
    if not db.is_closed():
        db.close()


@click.command("init-db")
def init_db_command() -> None:
    """Create the database tables (safe to run again)."""
    create_tables()
    click.echo(f"database ready: {current_app.config['DATABASE_URL'].split('@')[-1]}")


def init_app(app: Flask) -> None:
    """Bind the database and register per-request connect/close and the CLI."""
    db.initialize(open_database(app.config["DATABASE_URL"]))
    app.before_request(_connect)
    app.teardown_appcontext(_close)
    app.cli.add_command(init_db_command)
