"""What several test files share: the test app, tokens, request bodies, HTTP calls, streams.

Plain functions only: fixtures live in conftest.py, real servers in servers.py.
"""

import itertools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from peewee import SqliteDatabase

from chatsite import create_app
from chatsite.coordination import Coordinator
from chatsite.dev.instance import KNOBS, MODELS, DevInstance
from chatsite.site import Site
from chatsite.storage.database import db
from chatsite.storage.tables import create_tables
from tests.servers import wait_until

TEST_SECRET = "test-secret-" + "s" * 40
# The development chat instance's knobs for long streams, allowed as an operator would.
DEV_OPTIONS = KNOBS
TIMEOUT = 10  # seconds: a test talking to a local server never waits longer for an answer
NDJSON = "application/x-ndjson"
NO_INSTANCE = {"status": "error", "msg": "no chat instance available"}

# The wire protocols a chat instance may speak: streaming tests run for each.
KINDS = ("ollama", "openai")
# What the OpenAI API cannot tell of the dev models, configured as an operator would.
DEV_CAPABILITIES = {model.bare_name: list(model.capabilities) for model in MODELS.values()}
CHAT_PATHS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
GENERATE_PATHS = {"ollama": "/api/generate", "openai": "/v1/completions"}


# --- the app ------------------------------------------------------------------------------


def instance_entry(instance: DevInstance, kind: str = "ollama", max_concurrent: int = 4, **extra):
    """A CHAT_INSTANCES entry for a dev instance, speaking the wire protocol `kind`."""
    if kind == "openai":
        entry = {"url": instance.openai_url, "api": "openai", "models": DEV_CAPABILITIES}
    else:
        entry = {"url": instance.url}
    return {**entry, "max_concurrent": max_concurrent, **extra}


def build_app(folder: Path, database_url: str, *, tables: bool = True, **config: Any) -> Flask:
    """The real app with its files (chats, locks, instance folder) under `folder`.

    The tables are created as `init-db` does, unless `tables` is false.
    """
    settings = {
        "TESTING": True,
        "JWT_SECRET": TEST_SECRET,
        "DATABASE_URL": database_url,
        "CHAT_DIR": str(folder / "chats"),
        "LOCK_DIR": str(folder / "locks"),
        "CHAT_INSTANCES": [],
        "ALLOWED_OPTIONS": DEV_OPTIONS,
        **config,
    }
    app = create_app(settings, instance_path=str(folder / "instance"))
    if tables:
        create_tables()
    return app


def pg_url(base: str, schema: str, scheme: str | None = None, **params: Any) -> str:
    """`base` with its tables in `schema`, another scheme (`postgres+pool`) and parameters."""
    if scheme:
        base = scheme + base[base.index("://") :]
    params = {"options": f"-csearch_path={schema}", **params}
    query = "&".join(f"{key}={quote(str(value))}" for key, value in params.items())
    return f"{base}{'&' if '?' in base else '?'}{query}"


# --- users and tokens ---------------------------------------------------------------------


def new_user() -> str:
    """A fresh user id, as the sign-in service hands them out."""
    return str(uuid.uuid4())


def sign_token(
    user: str | None = None,
    secret: Any = TEST_SECRET,
    algorithm: str = "HS256",
    expires_in: int = 3600,
    headers: dict | None = None,
    **claims: Any,
) -> str:
    """A JWT for `user` (a fresh one by default); a claim given as None is left out."""
    now = int(time.time())
    payload = {"sub": user or new_user(), "iat": now, "exp": now + expires_in, **claims}
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def rsa_keys() -> tuple[bytes, str]:
    """A new RSA key pair: (private key PEM, public key PEM text)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


# --- request bodies -----------------------------------------------------------------------


def messages(*texts: str) -> list[dict]:
    """A conversation whose turns alternate user, assistant, user..."""
    roles = ("user", "assistant")
    return [{"role": roles[index % 2], "content": text} for index, text in enumerate(texts)]


def chat_body(token: str, content: str = "hello there", **extra: Any) -> dict:
    """A /chat body with one user message."""
    return {"token": token, "messages": messages(content), **extra}


def echo_body(token: str, content: str = "hello there", **extra: Any) -> dict:
    """A /chat body for the dev instance's `echo` model: "You said: <content>"."""
    return chat_body(token, content, model="echo", **extra)


def slow_body(token: str, delay: float = 0.05, repeat: int = 200, **extra: Any) -> dict:
    """A /chat body for a reply of 4 x `repeat` tokens, `delay` seconds apart.

    The default takes 40 s (200 x 4 x 0.05): long enough to stay open for any test.
    """
    options = {"dev_token_delay": delay, "dev_repeat": repeat}
    return chat_body(token, model="slow", options=options, **extra)


# --- HTTP and NDJSON ----------------------------------------------------------------------


def ndjson(lines: Iterable[bytes | str]) -> Iterator[dict]:
    """Parse NDJSON lines as they come, skipping blank ones."""
    return (json.loads(line) for line in lines if line)


def numbered(lines: Iterable[dict], first: int = 0) -> Iterator[dict]:
    """A /chat stream's lines without their `seq`, each checked to be the next number."""
    for expected, line in enumerate(lines, first):
        seq = line.pop("seq", None)
        assert seq == expected, f"line {line} has seq {seq}, not {expected}"
        yield line


def stream(
    url: str, path: str, body: dict, timeout: float = TIMEOUT
) -> tuple[requests.Response, list[dict] | None]:
    """POST to a streamed endpoint and read it all: (response, lines), or None for JSON.

    The lines of /chat are checked to be numbered 0, 1, 2, ... (`seq`), and given without it.
    """
    response = requests.post(f"{url}{path}", json=body, stream=True, timeout=timeout)
    if response.headers.get("Content-Type") != NDJSON:
        return response, None
    lines = ndjson(response.iter_lines())
    return response, list(numbered(lines) if path == "/chat" else lines)


class Stream:
    """A /chat answer being read: `first` is its first line, `lines` yields the rest.

    Keep the object while the stream should stay open: closing it (or dropping the line
    generator) closes the connection, as a client going away does. Lines are checked to be
    numbered and given without their `seq`.
    """

    def __init__(self, url: str, body: dict, session: requests.Session | None = None):
        post = (session or requests).post
        self.response = post(f"{url}/chat", json=body, stream=True, timeout=TIMEOUT)
        assert self.response.status_code == 200, self.response.text
        self.lines = numbered(ndjson(self.response.iter_lines()))
        self.first = next(self.lines)
        assert self.first["status"] == "ok" and self.first["done"] is False

    def close(self) -> None:
        self.response.close()


def create_chat(url: str, token: str) -> str:
    """POST /create-chat to a server: the new chat's id."""
    response = requests.post(f"{url}/create-chat", json={"token": token}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["chatId"]


def get_chat(url: str, token: str, chat_id: str) -> list[dict]:
    """POST /get-chat to a server: the chat's messages."""
    body = {"token": token, "chatId": chat_id}
    response = requests.post(f"{url}/get-chat", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["contents"]


def app_create_chat(post: Callable[..., Any], token: str) -> str:
    """POST /create-chat through the app's test client (the `post` fixture): the new id."""
    response = post("/create-chat", {"token": token})
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"
    assert response.json["msg"] == "chat created"
    return response.json["chatId"]


# --- what the servers did -----------------------------------------------------------------


def unanswered_tool_calls(contents: list[dict]) -> list[str]:
    """The names of the tool calls in a chat that no `tool` message answers.

    Chat servers (Ollama, OpenAI-compatible ones) want each assistant message's tool calls
    followed by one tool result per call, in order, before anything else.
    """
    unanswered: list[str] = []
    for index, message in enumerate(contents):
        calls = [call["function"]["name"] for call in message.get("tool_calls", [])]
        following = itertools.takewhile(lambda m: m["role"] == "tool", contents[index + 1 :])
        answers = [result.get("tool_name") for result in following][: len(calls)]
        answers += [None] * (len(calls) - len(answers))
        unanswered += [name for name, answer in zip(calls, answers, strict=True) if name != answer]
    return unanswered


def site_of(app: Flask) -> Site:
    """The app's services (coordinator, transcripts...), to look at what a request left."""
    return app.extensions["chatsite"]


def user_is_free(coordinator: Coordinator, user: str) -> bool:
    """Tell whether nobody holds the user's lock, by taking it and giving it back."""
    lease = coordinator.try_lock_user(user)
    if lease is not None:
        lease.release()
    return lease is not None


def upstream_bodies(instance: DevInstance, path: str = "/api/chat") -> list[dict]:
    """The bodies of the requests a dev instance received on `path`, oldest first.

    `path` may be a kind of instance ("openai"): its chat path then.
    """
    path = CHAT_PATHS.get(path, path)
    return [record["body"] for record in instance.requests() if record["path"] == path]


# --- production-like servers --------------------------------------------------------------


def init_db(url: str, folder: Path) -> None:
    """Create the tables, as `flask --app chatsite init-db` does, in this process."""
    build_app(folder, url)


def site_env(folder: Path, instances: list, database_url: str | None = None, init=True, **config):
    """The CHATSITE_* variables of one host whose files live in `folder`.

    SQLite in `folder` unless `database_url` is given; the tables are created unless `init`
    is false. Extra settings are given by name (`INSTANCE_WAIT_TIMEOUT=1`): strings as they
    are (gunicorn.conf.py reads some raw), anything else as JSON, which `from_prefixed_env`
    parses.
    """
    folder.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{folder / 'chatsite.db'}"
    if init:
        init_db(url, folder)
    env = {
        "CHATSITE_JWT_SECRET": TEST_SECRET,
        "CHATSITE_DATABASE_URL": url,
        "CHATSITE_CHAT_DIR": str(folder / "chats"),
        "CHATSITE_LOCK_DIR": str(folder / "locks"),
        "CHATSITE_JOURNAL_DIR": str(folder / "journal"),
        "CHATSITE_CHAT_INSTANCES": json.dumps(instances),
        "CHATSITE_INSTANCE_WAIT_TIMEOUT": "2",
        # Read by gunicorn.conf.py: a server stopped with streams still open stops quickly.
        "CHATSITE_GRACEFUL_TIMEOUT": "5",
        "CHATSITE_ALLOWED_OPTIONS": json.dumps(DEV_OPTIONS),
    }
    env.update(
        {
            f"CHATSITE_{name}": value if isinstance(value, str) else json.dumps(value)
            for name, value in config.items()
        }
    )
    return env


def sessions_on_workers(server, count, workers, attempts=200):
    """Open `count` keep-alive sessions spread over the workers: [(session, worker pid)].

    A burst of new connections is accepted by whichever worker wakes first, often all by
    one. A session's connection stays with the worker that accepted it, so the sessions
    are opened one by one (which spreads them) and each is tagged by a first request whose
    access-log line names its worker.
    """
    kept, spare = [], []
    per_worker = -(-count // workers)
    for attempt in range(attempts):
        if len(kept) == count:
            break
        session = requests.Session()
        session.get(f"{server.url}/healthz?conn={attempt}", timeout=TIMEOUT)
        line = re.compile(rf"\[(\d+)\].*\"GET /healthz\?conn={attempt} ")
        found = wait_until(lambda: line.search(server.log(10**6)), timeout=2)  # noqa: B023
        assert found, server.log()
        pid = int(found.group(1))
        if sum(p == pid for _, p in kept) < per_worker:
            kept.append((session, pid))
        else:
            spare.append((session, pid))
    while len(kept) < count and spare:
        kept.append(spare.pop())
    for session, _ in spare:
        session.close()
    return kept


# --- search, export and import ------------------------------------------------------------


def save_chat(url: str, token: str, chat_id: str, *texts: str) -> list[dict]:
    """/chat to the dev instance's `echo` model, saved to `chat_id`: the chat afterwards
    holds `texts` (user, assistant, user... ending with a user turn) and the echoed reply."""
    body = {"token": token, "model": "echo", "messages": messages(*texts), "chatfile": chat_id}
    response, lines = stream(url, "/chat", body)
    assert response.status_code == 200 and lines and lines[-1]["done"] is True, lines
    return lines


def export_document(*chats: dict) -> dict:
    """An export document (as /export gives it) holding `chats`."""
    return {
        "format": "chatsite-export",
        "version": 1,
        "exported_at": "2026-01-02T10:00:00.000Z",
        "chats": list(chats),
    }


def exported_chat(name: str, *texts: str, created: str = "2025-12-24T18:30:00.000Z") -> dict:
    """One chat of an export document, its messages alternating user and assistant."""
    stamped = [{**m, "timestamp": created} for m in messages(*texts)]
    return {"name": name, "created_at": created, "updated_at": created, "messages": stamped}


def post_json(url: str, path: str, body: dict) -> requests.Response:
    """POST a JSON body to a server."""
    return requests.post(f"{url}{path}", json=body, timeout=TIMEOUT)


def search_index_rows(owner: str) -> int:
    """Rows of the search index holding `owner`'s chats (on SQLite, also FTS5's own
    entries for them); call inside a connection."""
    param = "?" if isinstance(db.obj, SqliteDatabase) else "%s"
    sql = f"SELECT COUNT(*) FROM chat_search_docs WHERE owner = {param}"
    count = db.execute_sql(sql, (owner,)).fetchone()[0]
    if isinstance(db.obj, SqliteDatabase):
        match = f'owner : "{owner}"'
        sql = "SELECT COUNT(*) FROM chat_search WHERE chat_search MATCH ?"
        count += db.execute_sql(sql, (match,)).fetchone()[0]
    return count
