"""Nothing accepted is lost when the database blinks: the save journal and its replayer.

Over real gunicorn with gevent workers, PostgreSQL is reached through a TCP proxy the test
cuts (tests/tcp_proxy.py): a reply that ends while the database is away is journaled on the
host, reported `"saved": "pending"`, and appears in the chat exactly once when the database
is back, even if the worker that journaled it was killed. SQLite's outage is a write lock
held past the wait (an operator's shell or a backup holding a transaction). The rules the
replayer keeps (one chat's saves in order, a save never written twice) are also checked on
the app itself, with both chat stores.
"""

import fcntl
import json
import os
import signal
import sqlite3
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from chatsite.storage.chats import save_chat
from chatsite.storage.database import database_connection
from chatsite.storage.journal import HELD_PREFIX, Entry, Journal
from chatsite.storage.tables import Chat, stored_now
from tests.helpers import (
    TIMEOUT,
    Stream,
    app_create_chat,
    build_app,
    create_chat,
    get_chat,
    messages,
    new_user,
    pg_url,
    site_env,
    site_of,
    slow_body,
)
from tests.servers import wait_until
from tests.tcp_proxy import TcpProxy

AWAY = {"status": "error", "msg": "service temporarily unavailable"}


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
def pg_proxy(pg_schema):
    """(url, proxy): the test's PostgreSQL schema, reached through a proxy the test cuts."""
    base, schema = pg_schema
    parts = urlsplit(base)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    netloc = f"{parts.username}@" if parts.username else ""
    netloc += f"127.0.0.1:{proxy.port}"
    proxied = urlunsplit(parts._replace(netloc=netloc))
    yield pg_url(proxied, schema, connect_timeout=3), proxy
    proxy.close()


def journal_entries(folder) -> list[str]:
    """The entries waiting in a journal folder (neither temp files nor the lock)."""
    if not folder.exists():
        return []
    return sorted(
        name for name in os.listdir(folder) if name.endswith(".json") and name[0].isdigit()
    )


def read_reply(opened: Stream) -> tuple[str, dict]:
    """Read a stream to its end: (every `msg` joined, the last line)."""
    lines = [opened.first, *opened.lines]
    return "".join(line["msg"] for line in lines[:-1]), lines[-1]


def chat_once_back(url: str, token: str, chat_id: str, count: int, timeout: float = 30.0):
    """The chat's messages as soon as it holds `count` of them (None if it never does)."""

    def contents():
        body = {"token": token, "chatId": chat_id}
        response = requests.post(f"{url}/get-chat", json=body, timeout=TIMEOUT)
        if response.status_code != 200:
            return None
        found = response.json()["contents"]
        return found if len(found) >= count else None

    return wait_until(contents, timeout=timeout, step=0.2)


def reply_ended_while_away(server, proxy, token: str, chat_id: str, history=()) -> str:
    """Stream a short reply, cut the database before it ends: the reply's text.

    The last line is the ordinary one, with `"saved": "pending"`.
    """
    body = slow_body(token, delay=0.02, repeat=10, chatfile=chat_id)
    body["messages"] = [*history, *body["messages"]]
    opened = Stream(server.url, body)
    proxy.cut()
    text, last = read_reply(opened)
    assert last == {"status": "ok", "msg": "", "fullMsg": text, "done": True, "saved": "pending"}
    return text


# --- PostgreSQL through a proxy that is cut -----------------------------------------------


@pytest.mark.parametrize("store", ["database", "files"])
def test_a_reply_that_ends_while_the_database_is_away_is_saved_once_it_is_back(
    tmp_path, launch, upstream, sign_token_for, pg_proxy, store
):
    url, proxy = pg_proxy
    env = site_env(tmp_path, [upstream.url], database_url=url, CHAT_STORE=store)
    user, token = sign_token_for()
    server = launch(env, token)
    chat_id = create_chat(server.url, token)

    text = reply_ended_while_away(server, proxy, token, chat_id)
    # Kept on the host meanwhile; the chat cannot be read (the documented 503).
    assert len(journal_entries(tmp_path / "journal")) == 1
    response = requests.post(
        f"{server.url}/get-chat", json={"token": token, "chatId": chat_id}, timeout=TIMEOUT
    )
    assert (response.status_code, response.json()) == (503, AWAY)

    proxy.restore()
    contents = chat_once_back(server.url, token, chat_id, 2)
    assert contents is not None, server.log()
    assert [(m["role"], m["content"]) for m in contents] == [
        ("user", "hello there"),
        ("assistant", text),
    ]
    assert wait_until(lambda: not journal_entries(tmp_path / "journal"))
    assert len(get_chat(server.url, token, chat_id)) == 2  # and never a second time
    if store == "files":  # the transcript and the record agree
        transcript = tmp_path / "chats" / user / f"{chat_id}.json"
        assert json.loads(transcript.read_text()) == contents


def test_a_journaled_reply_is_saved_by_the_next_worker_when_its_worker_was_killed(
    tmp_path, launch, upstream, sign_token_for, pg_proxy
):
    url, proxy = pg_proxy
    env = site_env(tmp_path, [upstream.url], database_url=url, CHAT_STORE="database")
    _, token = sign_token_for()
    server = launch(env, token)
    chat_id = create_chat(server.url, token)

    text = reply_ended_while_away(server, proxy, token, chat_id)
    [killed] = server.worker_pids()
    os.kill(killed, signal.SIGKILL)  # while its replayer still waits for the database
    assert wait_until(lambda: server.worker_pids() not in ([], [killed]), timeout=20)
    assert len(journal_entries(tmp_path / "journal")) == 1

    proxy.restore()  # the new worker replays what the dead one journaled
    contents = chat_once_back(server.url, token, chat_id, 2)
    assert contents is not None, server.log()
    assert [m["content"] for m in contents] == ["hello there", text]
    assert wait_until(lambda: not journal_entries(tmp_path / "journal"))


def test_two_journaled_replies_of_one_chat_are_saved_in_order(
    tmp_path, launch, upstream, sign_token_for, pg_proxy
):
    url, proxy = pg_proxy
    env = site_env(tmp_path, [upstream.url], database_url=url, CHAT_STORE="database")
    _, token = sign_token_for()
    server = launch(env, token)
    chat_id = create_chat(server.url, token)
    first = reply_ended_while_away(server, proxy, token, chat_id)

    # Another replay holds the host's replay lock (as a worker replaying does): the first
    # save is still waiting when the database is back and the second reply ends.
    lock = os.open(tmp_path / "journal" / "replay.lock", os.O_RDWR | os.O_CREAT)
    try:
        assert wait_until(lambda: try_flock(lock))
        proxy.restore()
        history = messages("hello there", first)
        body = slow_body(token, delay=0.01, repeat=2, chatfile=chat_id)
        body["messages"] = [*history, {"role": "user", "content": "and then?"}]
        second, last = read_reply(Stream(server.url, body))
        assert last["saved"] == "pending"  # behind the first, though the database is up
        assert [name[21:57] for name in journal_entries(tmp_path / "journal")] == [chat_id] * 2
    finally:
        os.close(lock)

    contents = chat_once_back(server.url, token, chat_id, 4)
    assert contents is not None, server.log()
    assert [m["content"] for m in contents] == ["hello there", first, "and then?", second]
    assert wait_until(lambda: not journal_entries(tmp_path / "journal"))
    assert len(get_chat(server.url, token, chat_id)) == 4


def try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# --- SQLite: a write lock held past the wait ----------------------------------------------


def test_a_reply_saved_while_sqlite_is_locked_is_saved_once_the_lock_is_gone(
    tmp_path, launch, upstream, sign_token_for
):
    env = site_env(tmp_path, [upstream.url])
    _, token = sign_token_for()
    server = launch(env, token)
    chat_id = create_chat(server.url, token)

    holder = sqlite3.connect(tmp_path / "chatsite.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # an operator's shell in a write transaction
    try:
        # The save waits out the lock (SQLITE_LOCK_WAIT, 10 s), then journals the exchange.
        body = slow_body(token, delay=0.01, repeat=2, chatfile=chat_id)
        response = requests.post(f"{server.url}/chat", json=body, timeout=3 * TIMEOUT)
        lines = [json.loads(line) for line in response.text.splitlines()]
        text, last = "".join(line["msg"] for line in lines[:-1]), lines[-1]
        assert last["saved"] == "pending"
        assert get_chat(server.url, token, chat_id) == []  # readers are not locked out
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    contents = chat_once_back(server.url, token, chat_id, 2)
    assert contents is not None, server.log()
    assert [m["content"] for m in contents] == ["hello there", text]
    assert wait_until(lambda: not journal_entries(tmp_path / "journal"))


# --- the rules, on the app itself ---------------------------------------------------------


@pytest.fixture(params=["files", "database"])
def store_app(request, tmp_path):
    """An app on SQLite with either chat store."""
    return build_app(tmp_path, f"sqlite:///{tmp_path / 'chatsite.db'}", CHAT_STORE=request.param)


def test_a_replayed_save_never_lands_twice_nor_over_a_later_one(store_app, sign_token_for):
    user, token = sign_token_for()
    client = store_app.test_client()
    chat_id = app_create_chat(lambda path, body: client.post(path, json=body), token)
    saves = site_of(store_app).saves
    first = Entry(user, chat_id, stored_now(), messages("one", "two"))
    with store_app.app_context(), database_connection():
        # The save landed, but its answer was lost with the connection: journaled anyway.
        assert save_chat(saves.transcripts, user, chat_id, first.messages, first.accepted)
        saves.replay(first)
        assert saves.transcripts.read(user, chat_id) == first.messages
        assert Chat.get_by_id(chat_id).message_count == 2
        # A later save (another host's) is never overwritten by an older journaled one.
        later = messages("one", "two", "three", "four")
        assert save_chat(saves.transcripts, user, chat_id, later)
        saves.replay(first)
        assert saves.transcripts.read(user, chat_id) == later
        assert Chat.get_by_id(chat_id).message_count == 4


def test_journal_keeps_one_chats_saves_in_order_even_if_the_clock_goes_back(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "journal")
    chat_id, user = "0b5f6c4e-3f55-4f57-9a0e-1d1f2c3b4a59", "6a7e2e0c-92a1-45a3-8d4a-8c2b1f0e9d11"
    clock = iter([5_000, 4_000, 3_000])
    monkeypatch.setattr("chatsite.storage.journal.time.time_ns", lambda: next(clock))
    added = [journal.add(Entry(user, chat_id, stored_now(), messages(str(n)))) for n in range(3)]
    assert journal.pending(chat_id) == added
    assert [journal.read(path).messages[0]["content"] for path in added] == ["0", "1", "2"]


def test_an_entry_that_cannot_be_replayed_is_set_aside_never_dropped(store_app, sign_token_for):
    user, _ = sign_token_for()
    saves = site_of(store_app).saves
    journal = saves.journal
    journal.folder.mkdir(parents=True)
    (journal.folder / f"{0:020d}-{'1' * 8}-1111-1111-1111-{'1' * 12}.json").write_text("{not json")
    gone_chat = Entry(user, "22222222-2222-2222-2222-222222222222", stored_now(), messages("hi"))
    journal.add(gone_chat)
    with store_app.app_context():
        assert saves.replayer.replay_pass() is True
    held = sorted(name for name in os.listdir(journal.folder) if name.startswith(HELD_PREFIX))
    assert len(held) == 2 and journal.pending() == []


@pytest.fixture
def sign_token_for(token_for):
    """(user, token) for a fresh user."""

    def make():
        user = new_user()
        return user, token_for(user)

    return make
