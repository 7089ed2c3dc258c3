"""Deletes under gunicorn with gevent workers: an answer in flight is stopped first, on
whichever worker it runs; a worker SIGKILLed half-way through a delete leaves only files
that no record lists, and `flask --app chatsite cleanup` removes them."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest
import requests

from tests.helpers import (
    TIMEOUT,
    Stream,
    create_chat,
    echo_body,
    get_chat,
    pg_url,
    site_env,
    slow_body,
    stream,
)
from tests.servers import ROOT, wait_until


def post(server, path: str, body: dict) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, timeout=TIMEOUT)


def listed(server, token: str) -> dict[str, bool]:
    """The user's chats as /list-chats gives them: id -> generating."""
    answer = post(server, "/list-chats", {"token": token})
    assert answer.status_code == 200, answer.text
    return {chat["id"]: chat["generating"] for chat in answer.json()["chats"]}


def rest_of(reply: Stream) -> list[dict]:
    lines = list(reply.lines)
    reply.close()
    return lines


@pytest.mark.parametrize("store, database", [("files", "sqlite"), ("database", "postgresql")])
def test_deletes_stop_the_answer_in_flight_first(
    tmp_path, request, launch, upstream, token_for, user, store, database
):
    url = None
    if database == "postgresql":
        url = pg_url(*request.getfixturevalue("pg_schema"))
    env = site_env(
        tmp_path, [{"url": upstream.url, "max_concurrent": 4}], database_url=url, CHAT_STORE=store
    )
    token = token_for(user)
    server = launch(env, token, workers=2)
    answered, other, last = (create_chat(server.url, token) for _ in range(3))

    reply = Stream(server.url, slow_body(token, chatfile=answered))
    assert wait_until(lambda: listed(server, token)[answered])  # seen from either worker
    assert listed(server, token) == {answered: True, other: False, last: False}

    # Deleting another chat stops nothing.
    assert post(server, "/delete-chat", {"token": token, "chatId": other}).json()["msg"] == (
        "chat deleted"
    )
    assert next(reply.lines)["done"] is False

    # Deleting the chat being answered stops the answer first, then deletes it.
    deleted = post(server, "/delete-chat", {"token": token, "chatId": answered})
    assert deleted.status_code == 200 and deleted.json()["msg"] == "chat deleted"
    lines = rest_of(reply)
    assert lines[-1]["stopped"] is True and lines[-1]["done"] is True
    gone = post(server, "/get-chat", {"token": token, "chatId": answered})
    assert gone.status_code == 404
    assert listed(server, token) == {last: False}
    assert not (tmp_path / "chats" / user / f"{answered}.json").exists()

    # Deleting the account stops whatever answer is in flight, then deletes everything.
    reply = Stream(server.url, slow_body(token, chatfile=last))
    assert post(server, "/delete-account", {"token": token, "confirm": user}).status_code == 200
    assert rest_of(reply)[-1]["stopped"] is True
    assert listed(server, token) == {}
    assert not (tmp_path / "chats" / user).exists()
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)


def run_cleanup(env: dict) -> str:
    """`flask --app chatsite cleanup`, as an operator runs it: its output."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "chatsite", "cleanup"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_delete_killed_half_way_leaves_no_listed_chat_and_cleanup_ends_it(
    tmp_path, launch, upstream, token_for, user
):
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 4}])
    gate = tmp_path / "remove-gate"  # absent: every removal of chat files waits there
    token, neighbour = token_for(user), token_for()
    server = launch({**env, "CHATSITE_TEST_REMOVE_GATE": str(gate)}, token)
    for text in ("one", "two", "three"):
        chat_id = create_chat(server.url, token)
        assert stream(server.url, "/chat", echo_body(token, text, chatfile=chat_id))[0].ok
    kept = create_chat(server.url, neighbour)
    folder = tmp_path / "chats" / user
    assert len(list(folder.iterdir())) == 3

    def delete_account():
        with contextlib.suppress(requests.RequestException):  # the worker dies under it
            post(server, "/delete-account", {"token": token, "confirm": user})

    deleting = threading.Thread(target=delete_account)
    deleting.start()
    assert wait_until(lambda: gate.with_name("remove-gate.waiting").exists(), timeout=10)
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    deleting.join(TIMEOUT)

    # The records went first: nothing lists the files left behind.
    with sqlite3.connect(tmp_path / "chatsite.db") as database:
        for table, column in (("users", "uuid"), ("chats", "owner_uuid")):
            count = f"SELECT COUNT(*) FROM {table} WHERE {column} = ?"
            assert database.execute(count, (user,)).fetchone() == (0,)
    assert len(list(folder.iterdir())) == 3

    first = run_cleanup(env)
    assert "removed 3 chat files" in first and "1 empty folders" in first
    assert not folder.exists()
    again = run_cleanup(env)  # idempotent: nothing more to do
    assert "removed 0 chat files" in again and "0 empty folders" in again

    def served() -> bool:  # once the master has started a new worker
        try:
            return post(server, "/settings", {"token": neighbour}).ok
        except requests.ConnectionError:
            return False

    assert wait_until(served, timeout=15, step=0.1), server.log()
    assert get_chat(server.url, neighbour, kept) == []  # a listed chat's file is never touched
