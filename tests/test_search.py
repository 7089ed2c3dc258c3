"""/search-chats over real HTTP: both chat stores, SQLite and PostgreSQL, any script.

Chats are saved the way users save them (/chat with a chatfile, to the dev instance's echo
model, or /import-chats), so these tests also prove the index is kept by every save.
"""

import pytest

from chatsite.storage.database import db
from tests.helpers import (
    create_chat,
    export_document,
    exported_chat,
    post_json,
    save_chat,
    search_index_rows,
)


@pytest.fixture(params=["files", "database"])
def server(request, make_live):
    """A live app over one chat store (and, by `database_url`, one database)."""
    return make_live(CHAT_STORE=request.param)


def search(server, token, q, **extra):
    """The ids and answer of a search that must succeed."""
    response = post_json(server.url, "/search-chats", {"token": token, "q": q, **extra})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "ok"
    return [chat["id"] for chat in answer["chats"]], answer["chats"]


def saved(server, token, *texts):
    chat_id = create_chat(server.url, token)
    save_chat(server.url, token, chat_id, *texts)
    return chat_id


def test_words_found_in_messages_in_any_case_accents_and_script(server, token_for):
    token = token_for()
    german = saved(server, token, "Ich hätte gern eine CRÈME BRÛLÉE in Köln")
    japanese = saved(server, token, "昨日は東京タワーに行きました")
    russian = saved(server, token, "Привет, МИР! Как дела?")
    greek = saved(server, token, "Καλημέρα κόσμε")
    assert search(server, token, "creme brulee")[0] == [german]
    assert search(server, token, "Crème brûlée KÖLN")[0] == [german]
    assert search(server, token, "koln")[0] == [german]
    assert search(server, token, "ｃｒｅｍｅ")[0] == [german]  # noqa: RUF001 - full-width
    assert search(server, token, "東京")[0] == [japanese]  # inside a run with no spaces
    assert search(server, token, "タワー")[0] == [japanese]
    assert search(server, token, "京")[0] == [japanese]
    assert search(server, token, "京都")[0] == []
    assert search(server, token, "мир")[0] == [russian]
    assert search(server, token, "ΚΑΛΗΜΕΡΑ")[0] == [greek]
    assert search(server, token, "καλημερα")[0] == [greek]
    # Every word must be there; a word finds the longer words it begins.
    assert search(server, token, "creme tokyo")[0] == []
    assert search(server, token, "brul")[0] == [german]
    # The echoed reply is saved, and searched, too.
    assert search(server, token, "said")[0] == [greek, russian, japanese, german]


def test_names_are_searched_and_snippets_show_the_first_match(server, token_for):
    token = token_for()
    document = export_document(
        exported_chat("Voyage à Séville", "Where should we eat tonight?", "Try the tapas bars."),
    )
    response = post_json(server.url, "/import-chats", {"token": token, "document": document})
    assert response.status_code == 200, response.text
    (named,) = [chat["id"] for chat in response.json()["chats"]]
    long_text = "word " * 100 + "the Ñandú appears here " + "more " * 100
    chat_id = saved(server, token, "hello", "answer", long_text)

    ids, chats = search(server, token, "SEVILLE")
    assert ids == [named]
    assert chats[0]["snippet"] == "Voyage à Séville"  # only the name holds it
    assert chats[0]["name"] == "Voyage à Séville"
    assert chats[0]["created_at"] == "2025-12-24T18:30:00.000Z"

    ids, chats = search(server, token, "nandu")
    assert ids == [chat_id]
    snippet = chats[0]["snippet"]
    assert "the Ñandú appears here" in snippet
    assert snippet.startswith("…") and snippet.endswith("…")
    assert len(snippet) <= 162
    assert search(server, token, "tapas")[0] == [named]


def test_newest_first_and_kept_with_every_save(server, token_for):
    token = token_for()
    first = saved(server, token, "ramen in Sapporo", "with miso broth", "thanks")
    second = saved(server, token, "ramen in Fukuoka")
    assert search(server, token, "ramen")[0] == [second, first]
    assert search(server, token, "ramen", limit=1)[0] == [second]
    assert search(server, token, "miso")[0] == [first]
    # Saving the first again moves it to the front, and replaces what its messages hold
    # (its name, taken from its first message, stays).
    save_chat(server.url, token, first, "udon in Osaka")
    assert search(server, token, "ramen")[0] == [first, second]
    assert search(server, token, "udon")[0] == [first]
    assert search(server, token, "miso")[0] == []


def test_renamed_and_deleted_chats_leave_the_index(server, token_for, user):
    token = token_for(user)
    chat_id = saved(server, token, "a question about quinoa")
    kept = saved(server, token, "another about quinoa")
    rename = {"token": token, "chatId": chat_id, "name": "Müsli ideas"}
    assert post_json(server.url, "/rename-chat", rename).status_code == 200
    assert search(server, token, "musli")[0] == [chat_id]
    assert search(server, token, "question")[0] == [chat_id]  # its messages still count
    deleted = post_json(server.url, "/delete-chat", {"token": token, "chatId": chat_id})
    assert deleted.status_code == 200
    assert search(server, token, "quinoa")[0] == [kept]
    assert search(server, token, "musli")[0] == []
    with server.app.app_context(), db.connection_context():
        per_chat = 2 if "sqlite" in server.app.config["DATABASE_URL"] else 1
        assert search_index_rows(user) == per_chat  # the kept chat's only


def test_another_users_chats_are_never_found(server, token_for):
    alice, bob = token_for(), token_for()
    saved(server, alice, "my secret is pineapple")
    assert search(server, bob, "pineapple")[0] == []
    assert search(server, bob, "secret")[0] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "?! …"}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": 5}, "q"),
        ({"q": "tea", "limit": 0}, "limit"),
        ({"q": "tea", "limit": 51}, "limit"),
        ({"q": "tea", "limit": "5"}, "limit"),
        ({"q": "tea", "page": 2}, "page"),
    ],
)
def test_bad_searches_are_a_400_naming_the_field(post, token_for, body, field):
    response = post("/search-chats", {"token": token_for(), **body})
    assert response.status_code == 400
    assert response.json["status"] == "error"
    assert field in response.json["msg"]


def test_search_needs_a_valid_token(post):
    response = post("/search-chats", {"token": "nope", "q": "tea"})
    assert response.status_code == 401
