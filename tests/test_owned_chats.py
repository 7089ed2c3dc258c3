"""Users own their chats: /list-chats, /rename-chat, /delete-chat and /delete-account over
real HTTP, with both transcript stores, on SQLite and (when set) PostgreSQL."""

import datetime
import os
import uuid

import jwt
import pytest
import requests

from chatsite.api import responses
from chatsite.storage.chats import create_chat, save_chat
from chatsite.storage.database import db
from chatsite.storage.tables import Chat, ChatTranscript, User
from tests.helpers import (
    TIMEOUT,
    Stream,
    echo_body,
    get_chat,
    search_index_rows,
    site_of,
    slow_body,
    stream,
)
from tests.helpers import (
    create_chat as http_create_chat,
)
from tests.servers import wait_until

CF_NAMES = ["Trip\u200bto Rome", "\u202eemoR", "a\u2066b"]  # zero width space, RLO, isolate


@pytest.fixture(params=["files", "database"])
def store(request):
    return request.param


@pytest.fixture
def server(make_live, store):
    return make_live(CHAT_STORE=store)


def call(server, path: str, body: dict, code: int = 200) -> dict:
    """POST to the live server; the status must be `code`."""
    response = requests.post(f"{server.url}{path}", json=body, timeout=TIMEOUT)
    assert response.status_code == code, response.text
    return response.json()


def page(server, token: str, **extra) -> dict:
    answer = call(server, "/list-chats", {"token": token, **extra})
    responses.ChatListSchema().load(answer)  # the documented shape, nothing more
    return answer


def records(app, **where) -> dict:
    """What the tables hold (row counts) for a user or a chat."""
    with app.app_context(), db.connection_context():
        if "user" in where:
            user = where["user"]
            chats = Chat.select(Chat.id).where(Chat.owner == user)
            return {
                "users": User.select().where(User.uuid == user).count(),
                "chats": chats.count(),
                "chat_contents": ChatTranscript.select()
                .where(ChatTranscript.chat.in_([c.id for c in chats]))
                .count(),
                "search_index": search_index_rows(user),
            }
        chat = where["chat"]
        return {
            "chats": Chat.select().where(Chat.id == chat).count(),
            "chat_contents": ChatTranscript.select().where(ChatTranscript.chat == chat).count(),
        }


def stored_bytes(app, user: str) -> int:
    with app.app_context(), db.connection_context():
        return sum(c.transcript_bytes for c in Chat.select().where(Chat.owner == user))


def chat_file(server, user: str, chat_id: str) -> str:
    return os.path.join(server.app.config["CHAT_DIR"], user, f"{chat_id}.json")


# -- /list-chats -----------------------------------------------------------------------------


def test_paging_through_250_chats_misses_and_repeats_none_while_chats_are_added(
    server, token_for, user
):
    """Keyset pages: chats created and written to between pages go to the top; every
    other chat shows exactly once. Many chats share one last-update time (ties)."""
    token = token_for(user)
    app = server.app
    transcripts = site_of(app).transcripts
    call(server, "/settings", {"token": token})  # the user's record
    with app.app_context(), db.connection_context():
        made = [create_chat(transcripts, user, 10_000, 10**9) for _ in range(250)]
        same_time = datetime.datetime(2026, 1, 1, 12, 0, 0, 123456)
        Chat.update(updated_at=same_time).where(Chat.id.in_(made[:40])).execute()
    seen: list[str] = []
    written: set[str] = set()
    answer = page(server, token, limit=7)
    while True:
        seen += [chat["id"] for chat in answer["chats"]]
        # Between pages: a new chat, and one not yet seen is written to (it moves up).
        http_create_chat(server.url, token)
        unseen = [c for c in made if c not in seen and c not in written]
        if unseen:
            with app.app_context(), db.connection_context():
                save_chat(transcripts, user, unseen[-1], [{"role": "user", "content": "hi"}])
            written.add(unseen[-1])
        if answer["next"] is None:
            break
        answer = page(server, token, limit=7, before=answer["next"])
    assert len(seen) == len(set(seen)), "a chat showed twice"
    assert set(made) - written <= set(seen), "a chat was skipped"
    assert len(written) > 10


def test_a_page_is_newest_first_with_times_and_a_cursor(server, token_for):
    token = token_for()
    ids = [http_create_chat(server.url, token) for _ in range(3)]
    first = page(server, token, limit=2)
    assert [c["id"] for c in first["chats"]] == ids[:0:-1]
    assert first["chats"][0]["name"] == "New chat"
    assert first["chats"][0]["created_at"].endswith("Z")
    assert first["chats"][0]["generating"] is False
    second = page(server, token, limit=2, before=first["next"])
    assert [c["id"] for c in second["chats"]] == ids[:1]
    assert second["next"] is None
    everything = page(server, token)  # 50 by default
    assert [c["id"] for c in everything["chats"]] == ids[::-1] and everything["next"] is None
    assert page(server, token_for())["chats"] == []  # another user sees none of them


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"before": "not a cursor"}, "before"),
        ({"before": "WyIyMDI2IiwiLi4vLi4vZXRjIl0"}, "before"),  # ["2026", "../../etc"]
        ({"before": 17}, "before"),
        ({"after": "x"}, "after"),
    ],
)
def test_bad_list_requests_name_the_field(live, token_for, extra, field):
    answer = call(live, "/list-chats", {"token": token_for(), **extra}, 400)
    assert answer["status"] == "error" and field in answer["msg"]


def test_settings_lists_only_the_newest_chats(make_live, token_for):
    server = make_live(SETTINGS_CHAT_FILES=3)
    token = token_for()
    ids = [http_create_chat(server.url, token) for _ in range(5)]
    files = call(server, "/settings", {"token": token})["chat_files"]["files"]
    assert files == [{"id": chat_id, "name": "New chat"} for chat_id in ids[:1:-1]]
    assert len(page(server, token)["chats"]) == 5


def test_the_chat_being_answered_is_generating(server, token_for):
    token = token_for()
    answered, other = http_create_chat(server.url, token), http_create_chat(server.url, token)
    reply = Stream(server.url, slow_body(token, chatfile=answered))
    try:
        flags = {c["id"]: c["generating"] for c in page(server, token)["chats"]}
        assert flags == {answered: True, other: False}
    finally:
        reply.close()  # the answer outlives its client (a chatfile): /stop ends it
    assert requests.post(f"{server.url}/stop", json={"token": token}, timeout=TIMEOUT).ok
    assert wait_until(lambda: not any(c["generating"] for c in page(server, token)["chats"]))


# -- /rename-chat ------------------------------------------------------------------------------


def test_rename_trims_and_keeps_the_users_name(server, token_for, user, upstream):
    token = token_for(user)
    chat_id = http_create_chat(server.url, token)
    words = "Trajet à Zürich — 東京 "
    name = f"  {words}{'x' * (100 - len(words))} \t"
    answer = call(server, "/rename-chat", {"token": token, "chatId": chat_id, "name": name})
    assert answer == {"status": "ok", "msg": "chat renamed"}
    responses.OkSchema().load(answer)
    listed = page(server, token)["chats"][0]
    assert listed["name"] == name.strip() and len(name.strip()) == 100
    # The first message no longer names it: the user did.
    response, _ = stream(server.url, "/chat", echo_body(token, "hello", chatfile=chat_id))
    assert response.status_code == 200
    assert page(server, token)["chats"][0]["name"] == name.strip()


def test_another_users_or_an_unknown_chat_is_not_found(server, token_for):
    alice, bob = token_for(), token_for()
    chat_id = http_create_chat(server.url, alice)
    for path, extra in [("/rename-chat", {"name": "mine now"}), ("/delete-chat", {})]:
        for target in (chat_id, str(uuid.uuid4())):
            body = {"token": bob, "chatId": target, **extra}
            assert call(server, path, body, 404) == {"status": "error", "msg": "chat not found"}
    assert page(server, alice)["chats"][0]["name"] == "New chat"
    assert get_chat(server.url, alice, chat_id) == []


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, *CF_NAMES, "a\nb", 7, None])
def test_bad_names_are_refused(server, token_for, name):
    token = token_for()
    chat_id = http_create_chat(server.url, token)
    answer = call(server, "/rename-chat", {"token": token, "chatId": chat_id, "name": name}, 400)
    assert answer["msg"].startswith("name: ")
    assert page(server, token)["chats"][0]["name"] == "New chat"


# -- /delete-chat ------------------------------------------------------------------------------


def test_delete_removes_record_and_transcript(server, token_for, user, store):
    token = token_for(user)
    kept = http_create_chat(server.url, token)
    chat_id = http_create_chat(server.url, token)
    response, _ = stream(server.url, "/chat", echo_body(token, "é" * 500, chatfile=chat_id))
    assert response.status_code == 200
    before = stored_bytes(server.app, user)
    assert records(server.app, chat=chat_id)["chats"] == 1

    answer = call(server, "/delete-chat", {"token": token, "chatId": chat_id})
    assert answer == {"status": "ok", "msg": "chat deleted"}
    assert records(server.app, chat=chat_id) == {"chats": 0, "chat_contents": 0}
    assert not os.path.exists(chat_file(server, user, chat_id))
    assert stored_bytes(server.app, user) < before - 1000
    assert call(server, "/get-chat", {"token": token, "chatId": chat_id}, 404)
    assert [c["id"] for c in page(server, token)["chats"]] == [kept]
    assert call(server, "/delete-chat", {"token": token, "chatId": chat_id}, 404)
    assert get_chat(server.url, token, kept) == []


# -- /delete-account ---------------------------------------------------------------------------


def test_deleting_the_account_leaves_nothing(server, token_for, user, store):
    token = token_for(user)
    other = token_for()
    theirs = http_create_chat(server.url, other)
    call(server, "/update-settings", {"token": token, "prefs": {"nickname": "Ada"}})
    for text in ("first", "second", "third"):
        chat_id = http_create_chat(server.url, token)
        response, _ = stream(server.url, "/chat", echo_body(token, text, chatfile=chat_id))
        assert response.status_code == 200
    folder = os.path.join(server.app.config["CHAT_DIR"], user)
    if store == "files":
        assert len(os.listdir(folder)) == 3
    assert records(server.app, user=user) == {
        "users": 1,
        "chats": 3,
        "chat_contents": 3 if store == "database" else 0,
        "search_index": 3 * (2 if "sqlite" in server.app.config["DATABASE_URL"] else 1),
    }

    for wrong in ("", "yes", str(uuid.uuid4()), None):
        answer = call(server, "/delete-account", {"token": token, "confirm": wrong}, 400)
        assert answer["msg"].startswith("confirm: ")
    assert records(server.app, user=user)["chats"] == 3

    answer = call(server, "/delete-account", {"token": token, "confirm": user.upper()})
    assert answer == {"status": "ok", "msg": "account deleted"}
    assert records(server.app, user=user) == {
        "users": 0,
        "chats": 0,
        "chat_contents": 0,
        "search_index": 0,
    }
    assert not os.path.exists(folder)
    chat_dir = server.app.config["CHAT_DIR"]
    folders = os.listdir(chat_dir) if os.path.exists(chat_dir) else []
    assert folders == ([sign_subject(other)] if store == "files" else [])
    assert get_chat(server.url, other, theirs) == []  # nobody else's data went

    fresh = call(server, "/settings", {"token": token})  # a fresh user, as any new one
    assert fresh["nickname"] == "" and fresh["chat_files"] == {"files": []}


def sign_subject(token: str) -> str:
    """The `sub` of a test token (read without checking: it was made here)."""
    return jwt.decode(token, options={"verify_signature": False})["sub"]
