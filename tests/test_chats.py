"""/create-chat and /get-chat: ownership, ids that never become paths, atomicity."""

import json
import os
import threading
import uuid

import pytest

from chatsite.storage.database import db
from chatsite.storage.tables import Chat
from chatsite.storage.transcripts import FileTranscriptStore
from tests.helpers import app_create_chat, new_user


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
