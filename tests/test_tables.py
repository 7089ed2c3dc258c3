"""`init-db` brings an older database up to date in place: table names, columns, chat sizes."""

import uuid

import pytest
import requests

from chatsite.storage.chats import create_chat
from chatsite.storage.database import db
from chatsite.storage.search_schema import drop_search_index
from chatsite.storage.tables import Chat, ChatTranscript, User, create_tables
from tests.helpers import TIMEOUT, app_create_chat, get_chat


def columns(table: str) -> set[str]:
    with db.connection_context():
        return {column.name for column in db.get_columns(table)}


def make_older_database(app, store: str) -> tuple[str, str, int]:
    """The tables as they were before chat sizes were kept, holding one saved chat.

    Returns (user, chat id, bytes its transcript takes in the store).
    """
    user, chat_id = str(uuid.uuid4()), str(uuid.uuid4())
    messages = [{"role": "user", "content": "é" * 500, "timestamp": "2026-01-01T00:00:00Z"}]
    with app.app_context(), db.connection_context():
        db.execute_sql("ALTER TABLE chats RENAME TO chat_files")  # its name back then
        db.execute_sql('ALTER TABLE chat_files DROP COLUMN "transcript_bytes"')
        drop_search_index()  # nor was there a search index
        User.insert(uuid=user).execute()
        db.execute_sql(
            "INSERT INTO chat_files (id, owner_uuid, name, created_at, updated_at, message_count)"
            " VALUES (?, ?, 'old chat', '2026-01-01', '2026-01-01', 1)".replace("?", db.param),
            (chat_id, user),
        )
        transcripts = app.extensions["chatsite"].transcripts.inner  # the store, unindexed
        transcripts.create(user, chat_id, messages)
        return user, chat_id, transcripts.size(user, chat_id)


@pytest.mark.parametrize("store", ["files", "database"])
def test_init_db_adds_missing_columns_and_counts_old_chats(make_app, make_live, token_for, store):
    app = make_app(CHAT_STORE=store)
    user, chat_id, size = make_older_database(app, store)
    assert "transcript_bytes" not in columns("chat_files")

    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "renamed table chat_files to chats" in result.output
    assert "added column chats.transcript_bytes" in result.output
    assert "recorded the size of 1 chats" in result.output
    assert "indexed 1 chats for search" in result.output
    assert "transcript_bytes" in columns("chats")
    with app.app_context(), db.connection_context():
        assert Chat.get_by_id(chat_id).transcript_bytes == size > 1000
    again = app.test_cli_runner().invoke(args=["init-db"])
    assert again.exit_code == 0 and "added column" not in again.output
    assert "indexed" not in again.output
    assert create_tables() == []

    # Over HTTP: the old chat is served, and counts against the user's storage bound.
    token = token_for(user)
    live = make_live(CHAT_STORE=store, MAX_STORAGE_PER_USER=size + 1)
    assert get_chat(live.url, token, chat_id)[0]["content"] == "é" * 500
    found = requests.post(
        f"{live.url}/search-chats", json={"token": token, "q": "EEE"}, timeout=TIMEOUT
    )
    assert [chat["id"] for chat in found.json()["chats"]] == [chat_id]
    response = requests.post(f"{live.url}/create-chat", json={"token": token}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "chat storage full" in response.json()["msg"]


def release_before_with_a_chat(app) -> tuple[str, str]:
    """The tables as the release before created them (chat records in `chat_files`), with
    one user's chat made by that release's code; returns (user, chat id)."""
    user = str(uuid.uuid4())
    with app.app_context():
        Chat._meta.set_table_name("chat_files")
        try:
            create_tables()
            with db.connection_context():
                User.insert(uuid=user).execute()
                chat_id = create_chat(app.extensions["chatsite"].transcripts, user, 10, 10**6)
        finally:
            Chat._meta.set_table_name("chats")
    return user, chat_id


@pytest.mark.parametrize("store", ["files", "database"])
def test_init_db_renames_chat_files_to_chats_keeping_every_chat(make_app, token_for, store):
    app = make_app(tables=False, CHAT_STORE=store)
    user, before = release_before_with_a_chat(app)
    token = token_for(user)
    client = app.test_client()
    with app.app_context(), db.connection_context():
        assert {"chat_files", "chat_contents"} <= set(db.get_tables())
        assert "chats" not in db.get_tables()

    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "renamed table chat_files to chats" in result.output
    with app.app_context(), db.connection_context():
        assert "chat_files" not in db.get_tables()
        assert Chat.get_by_id(before).owner_uuid == user
        if db.obj.__class__.__name__.startswith("Postgres"):
            constraints = db.execute_sql(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'chats'::regclass"
            ).fetchall()
            assert {name for (name,) in constraints} == {"chats_pkey", "chats_owner_uuid_fkey"}

    # The chat made before is served and listed; new chats (and, in the database store,
    # their contents rows, whose foreign key follows the rename) go in beside it.
    post = lambda path, body: client.post(path, json=body)  # noqa: E731
    assert post("/get-chat", {"token": token, "chatId": before}).json["contents"] == []
    after = app_create_chat(post, token)
    listed = {f["id"] for f in post("/settings", {"token": token}).json["chat_files"]["files"]}
    assert listed == {before, after}
    with app.app_context(), db.connection_context():
        Chat.delete().where(Chat.id == after).execute()  # cascades to its contents row
        if store == "database":
            assert ChatTranscript.get_or_none(ChatTranscript.chat == after) is None

    again = app.test_cli_runner().invoke(args=["init-db"])
    assert again.exit_code == 0 and "renamed" not in again.output


def test_init_db_refuses_a_database_with_both_names(make_app):
    app = make_app()  # `chats` exists
    with app.app_context(), db.connection_context():
        db.execute_sql("CREATE TABLE chat_files (id VARCHAR(36) PRIMARY KEY)")
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    assert "both chat_files and chats exist" in result.output
    with app.app_context(), db.connection_context():
        assert {"chat_files", "chats"} <= set(db.get_tables())  # nothing was changed
