"""The database: bound from a URL in the factory, one connection per request."""

import contextlib
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlparse

import peewee
from flask import Flask, request
from peewee import DatabaseProxy, Model, SqliteDatabase
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url
from playhouse.pool import PooledSqliteDatabase

log = logging.getLogger(__name__)

db = DatabaseProxy()
T = TypeVar("T")

# Endpoints that open the connection themselves (the health check reports failures).
NO_CONNECT_ENDPOINTS = {"health.healthz"}

SQLITE_PRAGMAS = {
    # SQLite's own wait for a lock is a blocking C sleep that would freeze every greenlet of
    # a gevent worker: it is off, and CooperativeSqlite waits by sleeping in Python instead.
    "busy_timeout": 0,
    "journal_mode": "wal",
    "foreign_keys": 1,
    "synchronous": "normal",
}
SQLITE_LOCK_WAIT = 10.0  # seconds a statement waits for another writer, then fails
SQLITE_RETRY_DELAYS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # then 0.05 s each time
SQLITE_BUSY = 5


def is_busy(error: BaseException) -> bool:
    """Tell whether an error (or the driver error it wraps) is SQLITE_BUSY."""
    seen: BaseException | None = error
    while seen is not None:
        code = getattr(seen, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF == SQLITE_BUSY
        wrapped = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = wrapped or seen.__cause__ or seen.__context__
    return "database is locked" in str(error)


def wait_for_lock(action: Callable[[], T], wait: float = SQLITE_LOCK_WAIT) -> T:
    """Run `action`, retrying while another connection holds the lock, for up to `wait` s.

    The pauses are `time.sleep`, which gevent turns into a switch: other greenlets run
    while this one waits.
    """
    deadline = time.monotonic() + wait
    delays = itertools.chain(SQLITE_RETRY_DELAYS, itertools.repeat(SQLITE_RETRY_DELAYS[-1]))
    while True:
        try:
            return action()
        except (peewee.OperationalError, sqlite3.OperationalError) as error:
            if not is_busy(error) or time.monotonic() >= deadline:
                raise
        time.sleep(next(delays))


class CooperativeSqlite(PooledSqliteDatabase):
    """Pooled SQLite whose lock waits let the other greenlets (or threads) run.

    Retried: connecting, `BEGIN`, and statements outside a transaction; all of them fail
    before changing anything. A statement inside a transaction is not retried: the
    transaction already holds what it needs (write_transaction takes the write lock at
    BEGIN), or it must start again as a whole.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout = 0  # sqlite3.connect's own busy wait, used by the first pragmas

    def _connect(self) -> Any:
        return wait_for_lock(super()._connect)

    def begin(self, lock_type: str | None = None) -> None:
        wait_for_lock(lambda: super(CooperativeSqlite, self).begin(lock_type))

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if self.in_transaction():
            return super().execute_sql(sql, params)
        return wait_for_lock(lambda: super(CooperativeSqlite, self).execute_sql(sql, params))


class BaseModel(Model):
    """Base for every table; bound to the proxy, so no app is needed to import models."""

    class Meta:
        database = db


def open_database(url: str) -> Any:
    """Open a Peewee database from a URL, tuned for its engine; the URL's own query wins."""
    given = {key for key, _ in parse_qsl(urlparse(url).query)}
    options: dict[str, Any] = {"autoconnect": False}
    scheme = url.split(":", 1)[0]
    if scheme in ("sqlite", "sqlite+pool"):
        options["pragmas"] = SQLITE_PRAGMAS
        # The pool hands a connection to one thread at a time, then maybe to another.
        options["check_same_thread"] = False
    if scheme in ("sqlite", "sqlite+pool") or scheme.endswith("+pool"):
        # Reusing connections saves a connect, four pragmas and a WAL close per request.
        # A finite wait for a pooled connection: fail clearly instead of hanging a worker.
        options.update(max_connections=32, stale_timeout=300, timeout=10)
    options = {k: v for k, v in options.items() if k not in given}
    if scheme in ("sqlite", "sqlite+pool"):
        return CooperativeSqlite(**{**parse_url(url), **options})
    return connect_url(url, **options)


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
