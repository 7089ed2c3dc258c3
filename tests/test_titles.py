"""TITLE_MODEL: a short title after a chat's first answer, written in the background
against the dev instance, through the fair line, never holding the user, never replacing
a name the user gave."""

import logging
import threading

import pytest
import requests

from chatsite.storage.chats import name_titled
from chatsite.storage.database import db
from chatsite.titles import MAX_TITLE_CHARS, TITLE_PROMPT, clean_title
from tests.helpers import (
    TIMEOUT,
    Stream,
    app_create_chat,
    create_chat,
    echo_body,
    site_of,
    slow_body,
    stream,
    upstream_bodies,
)
from tests.servers import wait_until


@pytest.fixture
def title_logs(caplog):
    caplog.set_level(logging.INFO, logger="chatsite.titles")
    return caplog


def chat_name(server, token: str, chat_id: str) -> str:
    answer = requests.post(f"{server.url}/list-chats", json={"token": token}, timeout=TIMEOUT)
    return {chat["id"]: chat["name"] for chat in answer.json()["chats"]}[chat_id]


def title_requests(upstream) -> list[dict]:
    return [
        body
        for body in upstream_bodies(upstream)
        if body["messages"][-1]["content"].startswith(TITLE_PROMPT)
    ]


def logged(caplog, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


def test_a_first_answer_is_titled_in_the_background_while_the_user_goes_on(
    make_live, upstream, token_for, title_logs
):
    server = make_live(TITLE_MODEL="slow")  # the title takes a while: 32 pieces, 0.05 s apart
    token = token_for()
    chat_id = create_chat(server.url, token)
    response, lines = stream(server.url, "/chat", echo_body(token, "Plan a trip", chatfile=chat_id))
    assert lines[-1]["done"] is True
    assert chat_name(server, token, chat_id) == "Plan a trip"  # from the first message, at once
    assert wait_until(lambda: upstream.stats()["active_streams"] == 1)  # the title is written
    # ...and the user is not held meanwhile: nothing of theirs is in flight.
    stop = requests.post(f"{server.url}/stop", json={"token": token}, timeout=TIMEOUT)
    assert stop.status_code == 404
    again, _ = stream(
        server.url, "/chat", echo_body(token, "more", chatfile=create_chat(server.url, token))
    )
    assert again.status_code == 200

    [asked] = [body for body in title_requests(upstream) if "Plan a trip" in str(body)]
    assert asked["model"] == "slow:latest" and asked["options"]["num_predict"] == 32
    assert asked["messages"][-1]["content"].endswith("Plan a trip")
    expected = clean_title("You said: " + asked["messages"][-1]["content"])
    assert len(expected) == MAX_TITLE_CHARS and expected.endswith("…")
    assert wait_until(lambda: chat_name(server, token, chat_id) == expected, timeout=10)
    # A chat is titled once: the same first exchange sent again keeps the title it has.
    response, _ = stream(server.url, "/chat", echo_body(token, "Plan a trip", chatfile=chat_id))
    assert response.status_code == 200
    assert wait_until(lambda: logged(title_logs, f"chat {chat_id} keeps its name"))
    assert chat_name(server, token, chat_id) == expected
    assert len([body for body in title_requests(upstream) if "Plan a trip" in str(body)]) == 1


def test_a_title_waits_its_turn_and_is_dropped_when_no_slot_frees(
    make_live, upstream, token_for, title_logs
):
    server = make_live(
        TITLE_MODEL="slow",
        TITLE_WAIT=0.5,
        INSTANCE_WAIT_TIMEOUT=10,
        CHAT_INSTANCES=[{"url": upstream.url, "max_concurrent": 1}],
    )
    coordinator = site_of(server.app).coordinator
    user, other = token_for(), token_for()
    chat_id = create_chat(server.url, user)
    first = Stream(server.url, slow_body(user, delay=0.01, repeat=25, chatfile=chat_id))
    # Another user's long answer waits in line for the one slot, ahead of any title.
    waiting: dict = {}
    later = threading.Thread(
        target=lambda: waiting.update(reply=Stream(server.url, slow_body(other, repeat=100)))
    )
    later.start()
    assert wait_until(lambda: coordinator.waiting("slow:latest") == 1)
    assert list(first.lines)[-1]["done"] is True
    first.close()
    later.join(TIMEOUT)
    try:
        assert wait_until(lambda: logged(title_logs, f"no title for chat {chat_id}"), timeout=10)
        assert title_requests(upstream) == []  # it never took the slot out of turn
        assert chat_name(server, user, chat_id) == "hello there"
    finally:
        waiting["reply"].close()


def test_a_name_the_user_gave_is_never_replaced(make_live, upstream, token_for, title_logs):
    server = make_live(TITLE_MODEL="echo")
    token = token_for()
    chat_id = create_chat(server.url, token)
    body = {"token": token, "chatId": chat_id, "name": "My trip"}
    assert requests.post(f"{server.url}/rename-chat", json=body, timeout=TIMEOUT).ok
    response, _ = stream(server.url, "/chat", echo_body(token, "Plan a trip", chatfile=chat_id))
    assert response.status_code == 200
    assert wait_until(lambda: logged(title_logs, f"chat {chat_id} keeps its name"))
    assert title_requests(upstream) == []
    assert chat_name(server, token, chat_id) == "My trip"


def test_a_rename_that_lands_while_the_title_is_written_wins(app, post, token_for, user):
    token = token_for(user)
    chat_id = app_create_chat(post, token)
    assert (
        post("/rename-chat", {"token": token, "chatId": chat_id, "name": "Mine"}).status_code == 200
    )
    with app.app_context(), db.connection_context():
        assert name_titled(user, chat_id, "A title", ("new", "message")) is False
    answer = post("/list-chats", {"token": token}).json
    assert answer["chats"][0]["name"] == "Mine"


@pytest.mark.parametrize(
    "answer, title",
    [
        ('  "Trip to Rome"  ', "Trip to Rome"),
        ("**Trip\u200b to\tRome**\nsecond line", "Trip to Rome"),
        ("\u201cVoyage à Zürich\u201d", "Voyage à Zürich"),
        ("x" * 80, "x" * 59 + "…"),
        ("  \n\u202e ", None),
    ],
)
def test_a_models_answer_becomes_a_clean_name(answer, title):
    assert clean_title(answer) == title
