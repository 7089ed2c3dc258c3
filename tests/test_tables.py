"""`init-db` brings an older database up to date in place: missing columns, chat sizes."""

import uuid

import pytest
import requests

from chatsite.storage.database import db
from chatsite.storage.tables import Chat, User, create_tables
from tests.helpers import TIMEOUT, get_chat


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
        db.execute_sql('ALTER TABLE chat_files DROP COLUMN "transcript_bytes"')
        User.insert(uuid=user).execute()
        db.execute_sql(
            "INSERT INTO chat_files (id, owner_uuid, name, created_at, updated_at, message_count)"
            " VALUES (?, ?, 'old chat', '2026-01-01', '2026-01-01', 1)".replace("?", db.param),
            (chat_id, user),
        )
        transcripts = app.extensions["chatsite"].transcripts
        transcripts.create(user, chat_id, messages)
        return user, chat_id, transcripts.size(user, chat_id)


@pytest.mark.parametrize("store", ["files", "database"])
def test_init_db_adds_missing_columns_and_counts_old_chats(make_app, make_live, token_for, store):
    app = make_app(CHAT_STORE=store)
    user, chat_id, size = make_older_database(app, store)
    assert "transcript_bytes" not in columns("chat_files")

    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "added column chat_files.transcript_bytes" in result.output
    assert "recorded the size of 1 chats" in result.output
    assert "transcript_bytes" in columns("chat_files")
    with app.app_context(), db.connection_context():
        assert Chat.get_by_id(chat_id).transcript_bytes == size > 1000
    again = app.test_cli_runner().invoke(args=["init-db"])
    assert again.exit_code == 0 and "added column" not in again.output
    assert create_tables() == []

    # Over HTTP: the old chat is served, and counts against the user's storage bound.
    token = token_for(user)
    live = make_live(CHAT_STORE=store, MAX_STORAGE_PER_USER=size + 1)
    assert get_chat(live.url, token, chat_id)[0]["content"] == "é" * 500
    response = requests.post(f"{live.url}/create-chat", json={"token": token}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "chat storage full" in response.json()["msg"]
