"""The model catalog is fetched in the background: as a worker starts, then every
MODELS_CACHE_SECONDS. A request never waits for a refresh, only (briefly) for a worker's
very first fetch. Real gunicorn with gevent workers, and the app in one process."""

import logging
import socket

import pytest
import requests

from tests.helpers import TIMEOUT, site_env, site_of, stream, upstream_bodies
from tests.servers import wait_until

GENERATED = {"status": "ok", "response": "", "finalMsg": "hi"}  # echo: the prompt


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: the catalog, not the database, is tested."""
    return f"sqlite:///{tmp_path / 'chatsite.db'}"


def tags_asked(instance) -> int:
    """How many times the dev instance was asked for its models (GET /api/tags)."""
    return len(upstream_bodies(instance, "/api/tags"))


@pytest.fixture
def hung():
    """A chat instance that accepts connections and never answers (a frozen machine): the
    kernel completes the handshake, nobody reads. Closing it resets every waiting request."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def generate(url: str, token: str):
    body = {"token": token, "model": "echo", "prompt": "hi"}
    return stream(url, "/generate", body, timeout=TIMEOUT)


def test_a_worker_fetches_the_catalog_as_it_starts_and_then_every_ttl(
    tmp_path, launch, upstream, token_for
):
    """Before anyone asks for a model, the worker has its catalog, and keeps it fresh."""
    token = token_for()
    # Ready once it answers POST /settings, which needs no catalog: nothing asked for one.
    server = launch(site_env(tmp_path, [upstream.url], MODELS_CACHE_SECONDS=0.5), token)
    assert wait_until(lambda: tags_asked(upstream) >= 1), server.log()
    assert wait_until(lambda: tags_asked(upstream) >= 3), "no refresh in the background"
    assert not upstream_bodies(upstream, "/api/generate")
    response, lines = generate(server.url, token)
    assert response.status_code == 200 and lines[-1] == GENERATED


def test_no_request_waits_for_a_refresh(tmp_path, launch, upstream, token_for, hung):
    """Each fetch of the hung instance waits its read time-out (60 s, longer than these
    requests may take): the first request waits no longer than the connect time-out for
    the worker's first fetch, and no request waits for the refreshes after it."""
    env = site_env(
        tmp_path,
        [upstream.url, hung],
        MODELS_CACHE_SECONDS=0.5,
        UPSTREAM_CONNECT_TIMEOUT=1,
        UPSTREAM_READ_TIMEOUT=60,
    )
    token = token_for()
    server = launch(env, token)
    for _ in range(3):
        response, lines = generate(server.url, token)
        assert response.status_code == 200 and lines[-1] == GENERATED
    health = requests.get(f"{server.url}/healthz", timeout=TIMEOUT).json()
    assert [instance["reachable"] for instance in health["instances"]] == [True, False]


def test_a_refresher_that_dies_is_logged_and_replaced(make_app, upstream, caplog):
    """A refresher that dies (killed, or a bug escaping it) is replaced by the next reader."""
    caplog.set_level(logging.WARNING, logger="chatsite.llm.catalog")
    app = make_app(CHAT_INSTANCES=[upstream.url], MODELS_CACHE_SECONDS=60)
    catalog = site_of(app).catalog
    fetch = catalog.fetch

    def die_once():
        catalog.fetch = fetch
        raise SystemExit("killed")  # escapes the refresher's loop, as GreenletExit does

    catalog.fetch = die_once
    catalog.start()
    assert wait_until(lambda: "refresher died" in caplog.text), caplog.text
    assert tags_asked(upstream) == 0
    # The next reader starts a new refresher, which fetches.
    assert wait_until(lambda: catalog.models()), caplog.text
    assert "starting a new one" in caplog.text
    assert tags_asked(upstream) == 1
