"""The database: bound from a URL in the factory, one connection per request."""

import contextlib
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qsl, urlparse

from flask import Flask, request
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


def _connect() -> None:
    if request.endpoint in NO_CONNECT_ENDPOINTS:
        return
    db.connect(reuse_if_open=True)


def _close(_exc: BaseException | None = None) -> None:
    if not db.is_closed():
        db.close()


def init_app(app: Flask) -> None:
    """Bind the database and register the per-request connect and close."""
    db.initialize(open_database(app.config["DATABASE_URL"]))
    app.before_request(_connect)
    app.teardown_appcontext(_close)


@contextlib.contextmanager
def database_connection() -> Iterator[None]:
    """Reuse this thread's open connection, else open one and close it afterwards.

    For work outside a request (tools, saving after a stream). Not
    `db.connection_context()`: on exit it closes the connection whenever its own stack is
    empty, which would close a request's connection opened with `db.connect()`.
    """
    opened = db.connect(reuse_if_open=True)
    try:
        yield
    finally:
        if opened:
            db.close()
