"""Fixtures: a real app over a temp folder, SQLite or PostgreSQL, Redis, tokens, live servers.

The plain helpers they use (and the tests too) are in tests/helpers.py.
"""

import gc
import os
import signal
import uuid

import pytest
import redis
from playhouse.db_url import connect as connect_url

from chatsite.dev.instance import DevInstance
from tests.helpers import (
    KINDS,
    build_app,
    instance_entry,
    new_user,
    pg_url,
    sign_token,
    site_of,
)
from tests.servers import Gunicorn, ThreadedServer, need_service, wait_until

PG_URL = os.environ.get("CHATSITE_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("CHATSITE_TEST_REDIS_URL")


@pytest.fixture(autouse=True, scope="session")
def _clean_environment():
    """Keep the developer's CHATSITE_* variables out of the tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CHATSITE_")}
    for key in saved:
        if not key.startswith("CHATSITE_TEST_"):
            del os.environ[key]
    yield
    os.environ.update(saved)


def service_url(variable: str, value: str | None) -> str:
    """The service's URL, or skip (fail in CI) when it is not configured."""
    if not value:
        need_service(f"{variable} is not set")
    return value


@pytest.fixture
def pg_schema():
    """(url, schema): a PostgreSQL schema of this test's own, dropped afterwards."""
    base = service_url("CHATSITE_TEST_DATABASE_URL", PG_URL)
    admin = connect_url(base)
    try:
        admin.connect()
    except Exception as error:
        need_service(f"PostgreSQL is unreachable: {type(error).__name__}")
    schema = f"chatsite_test_{uuid.uuid4().hex[:12]}"
    admin.execute_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield base, schema
    finally:
        admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def redis_prefix():
    """(url, prefix): the test Redis and a key prefix of this test's own, cleaned up."""
    url = service_url("CHATSITE_TEST_REDIS_URL", REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        need_service(f"Redis is unreachable: {type(error).__name__}")
    prefix = f"chatsite-test-{uuid.uuid4().hex[:12]}"
    try:
        yield url, prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Run database-backed tests on SQLite and, when configured, PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chatsite.db'}"
    return pg_url(*request.getfixturevalue("pg_schema"))


@pytest.fixture
def make_app(tmp_path, database_url):
    """Build an app over a temp folder with extra config; its tables created unless told.

    Each app's catalog refresher (started by its first reader) stops when the test ends: it
    must not ask the shared dev instance for models during later tests.
    """
    built = []

    def build(tables=True, **config):
        built.append(build_app(tmp_path, database_url, tables=tables, **config))
        return built[-1]

    yield build
    for app in built:
        site_of(app).catalog.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    """Flask's runner for the operator commands (`init-db`, `issue-token`)."""
    return app.test_cli_runner()


@pytest.fixture
def token_for():
    """Sign a token for a user (a fresh uuid by default) with optional claim changes."""
    return sign_token


@pytest.fixture
def user():
    return new_user()


@pytest.fixture
def post(client):
    """POST a JSON body and return the response."""

    def send(path, body=None, **kwargs):
        return client.post(path, json=body, **kwargs)

    return send


@pytest.fixture(scope="session")
def dev_instance():
    """The shipped development chat instance, on a free port, for the whole session."""
    with DevInstance().start() as instance:
        yield instance


@pytest.fixture
def upstream(dev_instance):
    """The dev instance with fresh counters for this test."""
    dev_instance.reset()
    yield dev_instance
    wait_until(lambda: dev_instance.stats()["active_streams"] == 0)


@pytest.fixture
def make_live(make_app, upstream):
    """Serve an app (extra config allowed) over real HTTP, in a thread."""
    servers = []

    def serve(**config):
        config.setdefault("CHAT_INSTANCES", [{"url": upstream.url, "max_concurrent": 4}])
        config.setdefault("INSTANCE_WAIT_TIMEOUT", 2)
        server = ThreadedServer(make_app(**config)).start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def live(make_live):
    return make_live()


@pytest.fixture(params=KINDS)
def kind(request):
    """The wire protocol of the chat instance: a test using it runs for each."""
    return request.param


@pytest.fixture
def kind_live(make_live, upstream, kind):
    """`live`, its chat instance (the dev instance) speaking the wire protocol `kind`."""
    return make_live(CHAT_INSTANCES=[instance_entry(upstream, kind)])


@pytest.fixture
def launch(upstream):
    """Start gunicorn servers for this test; every one is stopped when it ends.

    Depends on `upstream` so that the servers stop before that fixture checks that every
    upstream stream has ended.
    """
    servers: list[Gunicorn] = []

    def start(env: dict, token: str | None, workers: int = 1) -> Gunicorn:
        server = Gunicorn(env, workers=workers)
        servers.append(server)
        return server.start(token)

    yield start
    # Responses caught in reference cycles keep their keep-alive connections open, and a
    # gunicorn worker waits for its idle connections (up to `keepalive`) before it exits.
    gc.collect()
    # SIGTERM to all at once: each takes a moment to drain, so stop them side by side.
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers:
        server.__exit__(None, None, None)
