"""/export and /import-chats over real HTTP: both chat stores, SQLite and PostgreSQL.

An export imported into another user gives the same chats; an import is all-or-nothing per
chat and within the user's bounds; a bad document is a 400 that imports nothing; and an
export of 500 chats streams from a gunicorn worker whose memory stays flat.
"""

import json
from pathlib import Path

import pytest
import requests

from tests.helpers import (
    TIMEOUT,
    create_chat,
    export_document,
    exported_chat,
    get_chat,
    post_json,
    save_chat,
    site_env,
)


@pytest.fixture(params=["files", "database"])
def server(request, make_live):
    """A live app over one chat store (and, by `database_url`, one database)."""
    return make_live(CHAT_STORE=request.param)


def export(url, token, **extra):
    """The export's response, read to its end."""
    response = requests.post(f"{url}/export", json={"token": token, **extra}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response


def without_ids(document):
    return [{k: v for k, v in chat.items() if k != "id"} for chat in document["chats"]]


def import_chats(url, token, document, code=200):
    response = post_json(url, "/import-chats", {"token": token, "document": document})
    assert response.status_code == code, response.text
    return response.json()


def test_export_then_import_into_another_user_gives_the_same_chats(server, token_for, user):
    alice, bob = token_for(user), token_for()
    post_json(server.url, "/update-settings", {"token": alice, "prefs": {"nickname": "Zoë"}})
    first = create_chat(server.url, alice)
    save_chat(server.url, alice, first, "Où est la gare ? 駅はどこですか")
    create_chat(server.url, alice)  # an empty one, still "New chat"
    last = create_chat(server.url, alice)
    save_chat(server.url, alice, last, "Grüße", "Hallo!", "Wie geht's? 🙂")

    response = export(server.url, alice)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    document = response.json()
    assert document["format"] == "chatsite-export" and document["version"] == 1
    assert document["user"]["uuid"] == user
    assert document["user"]["nickname"] == "Zoë"
    assert [chat["id"] for chat in document["chats"]][::2] == [last, first]  # newest first
    assert document["chats"][2]["messages"] == get_chat(server.url, alice, first)

    answer = import_chats(server.url, bob, document)
    assert answer["msg"] == "3 of 3 chats imported"
    assert answer["refused"] == []
    assert [chat["name"] for chat in answer["chats"]] == [c["name"] for c in document["chats"]]
    assert not {chat["id"] for chat in answer["chats"]} & {c["id"] for c in document["chats"]}

    again = export(server.url, bob).json()
    assert again["user"]["uuid"] != user and again["user"]["nickname"] == ""
    assert without_ids(again) == without_ids(document)  # names, messages, timestamps
    # The imported chats are the user's own: read, searched, continued.
    copy = again["chats"][0]["id"]
    assert get_chat(server.url, bob, copy) == document["chats"][0]["messages"]
    found = post_json(server.url, "/search-chats", {"token": bob, "q": "gare"}).json()
    assert [chat["id"] for chat in found["chats"]] == [again["chats"][2]["id"]]
    save_chat(server.url, bob, copy, "Grüße", "Hallo!", "Wie geht's? 🙂", "gut", "danke")


def test_export_as_markdown(server, token_for):
    token = token_for()
    chat_id = create_chat(server.url, token)
    save_chat(server.url, token, chat_id, "Tell me about **Kyōto**")
    response = export(server.url, token, format="markdown")
    assert response.headers["Content-Type"].startswith("text/markdown")
    assert response.headers["Content-Disposition"].endswith('.md"')
    text = response.text
    assert "## Tell me about **Kyōto**" in text
    assert "**user** (" in text and "**assistant** (" in text
    assert "You said: Tell me about **Kyōto**" in text


def test_import_is_whole_chats_within_the_bounds(make_live, token_for):
    server = make_live(MAX_STORAGE_PER_USER=3000, MAX_CHATS_PER_USER=3)
    token = token_for()
    small = exported_chat("small one", "hi")
    big = exported_chat("big one", "x" * 4000)
    document = export_document(small, big, exported_chat("second small", "hello"))
    answer = import_chats(server.url, token, document)
    assert [chat["name"] for chat in answer["chats"]] == ["small one", "second small"]
    assert answer["refused"] == [
        {"index": 1, "msg": "chat storage full: your chats may take at most 3000 bytes in all"}
    ]
    assert answer["msg"] == "2 of 3 chats imported"
    names = [chat["name"] for chat in export(server.url, token).json()["chats"]]
    assert sorted(names) == ["second small", "small one"]  # nothing of the big one

    answer = import_chats(server.url, token, export_document(small, small))
    assert answer["msg"] == "1 of 2 chats imported"
    assert answer["refused"] == [{"index": 1, "msg": "chat limit reached (3 chats)"}]
    refused = import_chats(server.url, token, export_document(small), code=400)
    assert refused == {"status": "error", "msg": "chat limit reached (3 chats)"}


GOOD = exported_chat("fine", "hello")


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"chats": [GOOD]}, "document.format"),
        ({**export_document(GOOD), "format": "other"}, "document.format"),
        ({**export_document(GOOD), "version": 2}, "document.version"),
        ({**export_document(GOOD), "extra": 1}, "document.extra"),
        ({k: v for k, v in export_document(GOOD).items() if k != "chats"}, "document.chats"),
        (export_document(GOOD, {**GOOD, "name": ""}), "document.chats.1.name"),
        (export_document(GOOD, {**GOOD, "created_at": "yesterday"}), "document.chats.1.created_at"),
        (export_document(GOOD, {**GOOD, "messages": "hi"}), "document.chats.1.messages"),
        (
            export_document(GOOD, {**GOOD, "messages": [{"role": "robot", "content": "x"}]}),
            "document.chats.1.messages.0.role",
        ),
        (
            export_document(
                GOOD, {**GOOD, "messages": [{"role": "user", "content": "x" * 100_001}]}
            ),
            "document.chats.1.messages.0.content",
        ),
        (
            export_document(GOOD, {**GOOD, "messages": [{"role": "user", "content": "x"}] * 501}),
            "document.chats.1.messages",
        ),
        ("not a document", "document"),
    ],
)
def test_a_bad_document_is_a_400_and_imports_nothing(post, token_for, document, field):
    token = token_for()
    response = post("/import-chats", {"token": token, "document": document})
    assert response.status_code == 400
    assert response.json["status"] == "error"
    assert field in response.json["msg"]
    assert post("/export", {"token": token}).json["chats"] == []


def test_export_and_import_need_a_valid_token(post):
    assert post("/export", {"token": "nope"}).status_code == 401
    assert post("/import-chats", {"token": "nope", "document": {}}).status_code == 401
    response = post("/export", {"token": "nope", "format": "pdf"})
    assert response.status_code == 401


def test_export_format_is_checked(post, token_for):
    response = post("/export", {"token": token_for(), "format": "pdf"})
    assert response.status_code == 400
    assert "format" in response.json["msg"]


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_export_of_500_chats_keeps_the_workers_memory_flat(tmp_path, launch, upstream, token_for):
    """The worker's peak memory grows by far less than the export it streams."""
    token = token_for()
    server = launch(site_env(tmp_path, [upstream.url], CHAT_STORE="database"), token)
    (worker,) = server.worker_pids()
    text = "Lorem ipsum dolor sit amet, ñandú 東京 " * 100  # ~3.8 KB a message
    chat = exported_chat("a chat", text, text, text, text, text)  # ~19 KB a chat
    for _ in range(20):  # 500 chats, 25 a request (each body under 1 MiB)
        answer = import_chats(server.url, token, export_document(*[chat] * 25))
        assert len(answer["chats"]) == 25
    # Every code path warmed up by a small export (another user's): a warm-up with the
    # 500 chats would leave a peak that hides the one measured.
    warm = token_for()
    import_chats(server.url, warm, export_document(chat))
    export(server.url, warm)
    before = peak_rss_kib(worker)

    size = 0
    with requests.post(
        f"{server.url}/export", json={"token": token}, stream=True, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_content(64 * 1024))
        size = len(body)
    after = peak_rss_kib(worker)
    assert len(json.loads(body)["chats"]) == 500
    assert size > 9_000_000
    # Built whole, the document alone would take its size again (and Python's objects
    # several times that); streamed, the peak moves by a small part of it, if at all.
    assert (after - before) * 1024 < size / 4, (before, after, size)
