"""/create-chat and /get-chat: ownership, ids that never become paths, atomicity."""

import json
import os
import threading
import uuid

import pytest
import requests

from chatsite.storage.database import db
from chatsite.storage.tables import Chat
from chatsite.storage.transcripts import FileTranscriptStore
from tests.helpers import (
    TIMEOUT,
    app_create_chat,
    create_chat,
    echo_body,
    get_chat,
    new_user,
    stream,
)


def test_create_then_get_and_list(post, token_for, user, app):
    token = token_for(user)
    chat_id = app_create_chat(post, token)
    assert uuid.UUID(chat_id).version == 4
    response = post("/get-chat", {"token": token, "chatId": chat_id})
    assert response.status_code == 200
    assert response.json == {"status": "ok", "msg": "", "contents": []}
    files = post("/settings", {"token": token}).json["chat_files"]["files"]
    assert files == [{"id": chat_id, "name": "New chat"}]
    path = os.path.join(app.config["CHAT_DIR"], user, f"{chat_id}.json")
    with open(path) as handle:
        assert json.load(handle) == []


def test_chats_listed_newest_first(post, token_for):
    token = token_for()
    ids = [app_create_chat(post, token) for _ in range(3)]
    listed = [f["id"] for f in post("/settings", {"token": token}).json["chat_files"]["files"]]
    assert listed == ids[::-1]


def test_another_users_chat_is_not_found(post, token_for):
    alice, bob = token_for(), token_for()
    chat_id = app_create_chat(post, alice)
    response = post("/get-chat", {"token": bob, "chatId": chat_id})
    assert response.status_code == 404
    assert response.json == {"status": "error", "msg": "chat not found"}
    missing = post("/get-chat", {"token": bob, "chatId": str(uuid.uuid4())})
    assert missing.status_code == 404
    assert missing.json == response.json


@pytest.mark.parametrize(
    "chat_id",
    ["../../etc/passwd", "..", "", "not-a-uuid", "/etc/passwd", "%2e%2e", 17, None, ["x"]],
)
def test_bad_chat_ids_are_rejected(post, token_for, chat_id):
    response = post("/get-chat", {"token": token_for(), "chatId": chat_id})
    assert response.status_code == 400
    assert "chatId" in response.json["msg"]


def test_get_chat_requires_chat_id(post, token_for):
    response = post("/get-chat", {"token": token_for()})
    assert response.status_code == 400
    assert "chatId" in response.json["msg"]


def test_store_paths_stay_inside_root(tmp_path):
    store = FileTranscriptStore(tmp_path)
    user, chat = new_user(), str(uuid.uuid4())
    assert store.path(user, chat).is_relative_to(tmp_path.resolve())
    for bad in ("../x", "..", "a/b"):
        with pytest.raises(ValueError):
            store.path(user, bad)
        with pytest.raises(ValueError):
            store.path(bad, chat)


def test_failed_file_write_leaves_neither_file_nor_row(app, post, token_for, user, monkeypatch):
    token = token_for(user)
    app_create_chat(post, token)  # the user and one good chat exist

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("chatsite.storage.transcripts.os.replace", broken_replace)
    response = post("/create-chat", {"token": token})
    assert response.status_code == 500
    assert response.json == {"status": "error", "msg": "could not create the chat"}
    monkeypatch.undo()
    with app.app_context(), db.connection_context():
        assert Chat.select().where(Chat.owner == user).count() == 1
    user_dir = os.path.join(app.config["CHAT_DIR"], user)
    assert len(os.listdir(user_dir)) == 1  # no temp file, no second chat


def test_failed_row_insert_leaves_no_row_and_no_file(app, post, token_for, user, monkeypatch):
    token = token_for(user)
    app_create_chat(post, token)

    original_create = Chat.create

    def create_then_fail(**fields):
        original_create(**fields)
        raise RuntimeError("database gone")

    monkeypatch.setattr(Chat, "create", create_then_fail)
    assert post("/create-chat", {"token": token}).status_code == 500
    monkeypatch.undo()
    assert len(post("/settings", {"token": token}).json["chat_files"]["files"]) == 1
    assert len(os.listdir(os.path.join(app.config["CHAT_DIR"], user))) == 1


def test_chat_count_is_limited(make_app, token_for):
    client = make_app(MAX_CHATS_PER_USER=2).test_client()
    token = token_for()
    for _ in range(2):
        assert client.post("/create-chat", json={"token": token}).status_code == 200
    response = client.post("/create-chat", json={"token": token})
    assert response.status_code == 400
    assert "limit" in response.json["msg"]


def test_stray_temp_files_are_cleaned(tmp_path):
    folder = tmp_path / str(uuid.uuid4())
    folder.mkdir()
    stray = folder / ".tmp-abc.json"
    stray.write_text("[")
    os.utime(stray, (0, 0))
    fresh = folder / ".tmp-new.json"
    fresh.write_text("[")
    assert FileTranscriptStore(tmp_path).clean_stray_temp_files() == 1
    assert not stray.exists() and fresh.exists()


def test_forty_concurrent_creates_from_one_user(app, token_for, user):
    """Each request on its own thread, as a threaded server runs them."""
    token = token_for(user)
    results = []

    def one():
        with app.test_client() as client:
            response = client.post("/create-chat", json={"token": token})
            results.append((response.status_code, response.json.get("chatId")))

    threads = [threading.Thread(target=one) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [code for code, _ in results] == [200] * 40
    created = {chat_id for _, chat_id in results}
    listed = app.test_client().post("/settings", json={"token": token}).json["chat_files"]["files"]
    assert {f["id"] for f in listed} == created
    assert len(created) == 40


# --- the per-user storage bound, over real HTTP ------------------------------------------


def save_turn(url, token, content, chat_id):
    """/chat with a chatfile: (status, the stream's lines, or the JSON error)."""
    response, lines = stream(url, "/chat", echo_body(token, content, chatfile=chat_id))
    return response.status_code, lines if lines is not None else response.json()


def refused_chat(url, token):
    """/create-chat that must be refused: its JSON error."""
    response = requests.post(f"{url}/create-chat", json={"token": token}, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    return response.json()


def test_storage_per_user_is_bounded(make_live, token_for, upstream):
    live = make_live(MAX_STORAGE_PER_USER=3000)
    token, other = token_for(), token_for()
    chat_id = create_chat(live.url, token)
    # Within the bound: saved.
    status, lines = save_turn(live.url, token, "a" * 1000, chat_id)
    assert status == 200 and lines[-1]["done"] is True
    # Replacing the chat counts its new size only (not the old one on top).
    status, lines = save_turn(live.url, token, "b" * 1000, chat_id)
    assert status == 200 and lines[-1]["done"] is True
    # Past it: refused before anything is generated, with a clear reason; nothing changes.
    before = len(upstream.requests())
    status, error = save_turn(live.url, token, "c" * 3000, chat_id)
    assert status == 400
    assert error["status"] == "error"
    assert error["msg"].startswith("chat storage full: your chats may take at most 3000 bytes")
    assert len(upstream.requests()) == before
    assert [m["content"][0] for m in get_chat(live.url, token, chat_id)] == ["b", "Y"]
    # Other users have their own bound.
    status, lines = save_turn(live.url, other, "d" * 2000, create_chat(live.url, other))
    assert status == 200 and lines[-1]["done"] is True


def test_an_accepted_reply_is_saved_even_past_the_bound(make_live, token_for):
    """The bound refuses the next request, never a reply already streamed to the user."""
    live = make_live(MAX_STORAGE_PER_USER=3000)
    token = token_for()
    chat_id = create_chat(live.url, token)
    # The request takes ~1,550 bytes: it fits. With the echoed reply the chat takes ~3,100.
    status, lines = save_turn(live.url, token, "x" * 1500, chat_id)
    assert status == 200 and lines[-1]["done"] is True
    contents = get_chat(live.url, token, chat_id)
    assert contents[1]["content"] == "You said: " + "x" * 1500
    assert len(json.dumps(contents, ensure_ascii=False)) > 3000
    assert "chat storage full" in refused_chat(live.url, token)["msg"]


def test_creating_a_chat_respects_the_bound(make_live, token_for):
    live = make_live(MAX_STORAGE_PER_USER=1000)
    token = token_for()
    status, lines = save_turn(live.url, token, "x" * 480, create_chat(live.url, token))
    assert status == 200 and lines[-1]["done"] is True
    # The chat now takes ~1,070 bytes: no room for another.
    assert "chat storage full" in refused_chat(live.url, token)["msg"]


# --- saving: the record and the transcript change together or not at all ----------------


@pytest.mark.parametrize("failing", ["rename", "row"])
def test_a_failed_save_changes_neither_record_nor_file(
    live, app, token_for, user, monkeypatch, failing
):
    token = token_for(user)
    chat_id = create_chat(live.url, token)
    status, lines = save_turn(live.url, token, "first", chat_id)
    assert status == 200 and lines[-1]["done"] is True
    before = get_chat(live.url, token, chat_id)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    if failing == "rename":
        monkeypatch.setattr("chatsite.storage.transcripts.os.replace", broken)
    else:
        monkeypatch.setattr(Chat, "update", broken)
    status, lines = save_turn(live.url, token, "second", chat_id)
    assert lines[-1] == {
        "status": "error",
        "msg": "the reply could not be saved to the chat",
        "done": True,
    }
    monkeypatch.undo()
    assert get_chat(live.url, token, chat_id) == before
    with app.app_context(), db.connection_context():
        chat = Chat.get_by_id(chat_id)
        assert (chat.name, chat.message_count) == ("first", 2)
    # No temp file was left behind.
    assert os.listdir(os.path.join(app.config["CHAT_DIR"], user)) == [f"{chat_id}.json"]
