"""Answers that outlive their client, and /resume, over gunicorn with gevent workers.

Each slow scenario runs once; scenarios that can share a server do.
"""

import os
import signal

import requests

from chatsite.coordination import FileCoordinator
from chatsite.streaming.linelog import LOST
from tests.helpers import (
    TIMEOUT,
    create_chat,
    get_chat,
    ndjson,
    sessions_on_workers,
    site_env,
    slow_body,
    user_is_free,
)
from tests.servers import wait_until

TEXT = "You said: hello there"


def resume(server, token, chat_id, start=None, session=None):
    """POST /resume: (response, line iterator) — the lines keep their `seq`."""
    body = {"token": token, "chatId": chat_id}
    if start is not None:
        body["from"] = start
    response = (session or requests).post(
        f"{server.url}/resume", json=body, stream=True, timeout=TIMEOUT
    )
    return response, ndjson(response.iter_lines())


def post(server, path, body, session=None):
    return (session or requests).post(f"{server.url}{path}", json=body, timeout=TIMEOUT)


def post_stream(server, path, body, session=None):
    """A streamed POST that was answered 200, else None (closed)."""
    response = (session or requests).post(
        f"{server.url}{path}", json=body, stream=True, timeout=TIMEOUT
    )
    if response.status_code == 200:
        return response
    response.close()
    return None


def open_chat(server, body, session=None):
    """Start a /chat and return (response, line iterator)."""
    response = (session or requests).post(
        f"{server.url}/chat", json=body, stream=True, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return response, ndjson(response.iter_lines())


def consecutive(lines, first=0):
    """True when the lines are numbered first, first + 1, ... without a hole or a double."""
    return [line["seq"] for line in lines] == list(range(first, first + len(lines)))


def generating_entry(server, token, chat_id, session=None):
    files = post(server, "/settings", {"token": token}, session).json()["chat_files"]["files"]
    (entry,) = [entry for entry in files if entry["id"] == chat_id]
    return entry.get("generating", False)


def host(tmp_path, upstream, **config):
    return site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 8}], **config)


def test_an_answer_outlives_its_client_and_is_resumed_anywhere(
    tmp_path, launch, upstream, token_for, user
):
    config = {"DETACHED_MAX_SECONDS": 3, "RESUME_KEEP_SECONDS": 4, "RESUME_KEEP_LINES": 60}
    token = token_for(user)
    server = launch(host(tmp_path, upstream, **config), token, workers=2)
    (one, one_pid), (two, two_pid) = sessions_on_workers(server, 2, workers=2)
    assert one_pid != two_pid
    chat_id = create_chat(server.url, token)

    # The client reads 3 lines and goes; 44 more tokens come, 0.05 s apart.
    body = slow_body(token, delay=0.05, repeat=12, chatfile=chat_id)
    response, lines = open_chat(server, body, one)
    seen = [next(lines) for _ in range(3)]
    response.close()
    assert consecutive(seen)

    # While it runs: another request is a 429; /get-chat and /settings say it is generating.
    assert post(server, "/chat", slow_body(token, repeat=1), two).status_code == 429
    contents = post(server, "/get-chat", {"token": token, "chatId": chat_id}, two).json()
    assert contents["contents"][-1]["generating"] is True
    assert contents["contents"][-1]["incomplete"] is True
    assert generating_entry(server, token, chat_id, two) is True

    # Two readers at once: from 0 on the other worker (the whole answer, live to its end),
    # and from the first line the client missed on the producer's worker.
    response, redrawn = resume(server, token, chat_id, session=two)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(
        "application/x-ndjson"
    )
    _, rest = resume(server, token, chat_id, start=seen[-1]["seq"] + 1, session=one)
    redrawn, rest = list(redrawn), list(rest)
    assert consecutive(redrawn) and redrawn[:3] == seen
    assert consecutive(rest, first=3) and seen + rest == redrawn
    last = redrawn[-1]
    assert last == {"status": "ok", "msg": "", "fullMsg": TEXT * 12, "done": True, "seq": 48}
    assert "".join(line["msg"] for line in redrawn[:-1]) == TEXT * 12

    # It went to its end on the instance, was saved complete, and the user is free.
    assert wait_until(lambda: post(server, "/chat", slow_body(token, repeat=1), two).ok)
    assert upstream.stats()["completed_streams"] >= 1
    assert upstream.stats()["disconnected_streams"] == 0
    saved = get_chat(server.url, token, chat_id)
    assert saved[-1] == {
        "role": "assistant",
        "content": TEXT * 12,
        "timestamp": saved[-1]["timestamp"],
    }
    assert generating_entry(server, token, chat_id) is False

    # After its end, within the keep time: the whole answer again, on either worker.
    for session in (one, two):
        response, again = resume(server, token, chat_id, session=session)
        assert list(again) == redrawn
    # Another user's chat, an unknown chat: nothing to resume.
    nothing = {"status": "error", "msg": "nothing to resume"}
    for who, chat in ((token_for(), chat_id), (token, "6f1c8a52-3f7e-4f0e-9a51-2b7d0d2c9e11")):
        response = post(server, "/resume", {"token": who, "chatId": chat})
        assert (response.status_code, response.json()) == (404, nothing)
    # Past the keep time: gone.
    assert wait_until(
        lambda: post(server, "/resume", {"token": token, "chatId": chat_id}).status_code == 404,
        timeout=10,
    )

    # A `from` older than what is kept (60 lines): from the oldest kept, marked as a gap.
    long_chat = create_chat(server.url, token)
    body = slow_body(token, delay=0.001, repeat=25, chatfile=long_chat)  # 101 lines
    response, lines = open_chat(server, body, one)
    whole = list(lines)
    for session in (one, two):
        _, kept = resume(server, token, long_chat, start=0, session=session)
        kept = list(kept)
        assert kept[0]["gap"] is True and kept[0]["seq"] > 0
        first = kept[0]["seq"]
        assert kept[1:] == whole[first + 1 :] and consecutive(kept, first)

    # Nobody reads an answer for DETACHED_MAX_SECONDS: it is stopped and saved incomplete.
    other = token_for()
    unread_chat = create_chat(server.url, other)
    response, lines = open_chat(server, slow_body(other, chatfile=unread_chat), one)  # 40 s
    next(lines)
    response.close()
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1, timeout=15)
    assert wait_until(lambda: post(server, "/chat", slow_body(other, repeat=1), two).ok)
    saved = get_chat(server.url, other, unread_chat)
    assert saved[-1]["incomplete"] is True and saved[-1]["content"].startswith("You ")
    assert "generating" not in saved[-1]

    # /stop ends a detached answer at once, from the other worker.
    stopped_chat = create_chat(server.url, other)
    response, lines = open_chat(server, slow_body(other, chatfile=stopped_chat), one)
    next(lines)
    response.close()
    assert post(server, "/stop", {"token": other}, two).json() == {"status": "ok", "msg": "stopped"}
    _, ending = resume(server, other, stopped_chat, session=two)
    assert list(ending)[-1]["stopped"] is True
    assert get_chat(server.url, other, stopped_chat)[-1]["incomplete"] is True

    # Without a chatfile, /chat and /generate still end with their client.
    before = upstream.stats()["disconnected_streams"]
    response, lines = open_chat(server, slow_body(other), one)
    next(lines)
    response.close()
    options = {"dev_token_delay": 0.05, "dev_repeat": 200}
    generate = {"token": other, "model": "slow", "prompt": "hi", "options": options}
    response = wait_until(lambda: post_stream(server, "/generate", generate, two))
    next(response.iter_lines())
    response.close()
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == before + 2)


def test_a_killed_worker_leaves_its_checkpoint_and_resume_ends_in_error(
    tmp_path, launch, upstream, token_for, user
):
    token = token_for(user)
    server = launch(host(tmp_path, upstream), token, workers=2)
    (one, one_pid), (two, _) = sessions_on_workers(server, 2, workers=2)
    chat_id = create_chat(server.url, token)
    response, lines = open_chat(server, slow_body(token, chatfile=chat_id), one)  # 40 s
    next(lines)
    response.close()
    # The client left: a checkpoint follows at once (the periodic one would come in 5 s).
    assert wait_until(lambda: get_chat(server.url, token, chat_id)[-1]["content"], timeout=2.5)
    _, following = resume(server, token, chat_id, session=two)
    seen = [next(following) for _ in range(5)]
    os.kill(one_pid, signal.SIGKILL)
    rest = list(following)
    assert rest[-1] == {"status": "error", "msg": LOST, "done": True, "seq": rest[-1]["seq"]}
    assert consecutive(seen + rest)
    # The lock went with the worker; the saved answer is the checkpoint, incomplete.
    assert wait_until(lambda: user_is_free(FileCoordinator(tmp_path / "locks"), user))
    saved = get_chat(server.url, token, chat_id)
    assert saved[-1]["incomplete"] is True and "generating" not in saved[-1]
    assert (TEXT * 200).startswith(saved[-1]["content"]) and saved[-1]["content"]


def test_sigterm_ends_a_detached_answer_and_saves_it(tmp_path, launch, upstream, token_for, user):
    token = token_for(user)
    env = host(tmp_path, upstream, GRACEFUL_TIMEOUT=3)
    server = launch(env, token)
    chat_id = create_chat(server.url, token)
    response, lines = open_chat(server, slow_body(token, chatfile=chat_id), None)  # 40 s
    seen = [next(lines) for _ in range(3)]
    response.close()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(15) == 0, server.log()
    assert "interrupted 1 running streams at shutdown" in server.log(10**6)
    assert user_is_free(FileCoordinator(tmp_path / "locks"), user)
    again = launch(env, token)
    # Within the keep time the new server's /resume shows how it ended.
    _, ending = resume(again, token, chat_id)
    last = list(ending)[-1]
    assert last["status"] == "error" and "restarting" in last["msg"], last
    saved = get_chat(again.url, token, chat_id)
    assert saved[-1]["incomplete"] is True
    content = saved[-1]["content"]
    assert content.startswith("".join(line["msg"] for line in seen)) and len(content) > 20


def test_a_checkpoint_is_kept_without_fsync_and_searchable_after_the_final_save(
    tmp_path, launch, upstream, token_for, user
):
    """A checkpoint is cheap: it neither waits for the disk's fsync nor indexes the chat for
    search; the answer's final save does both (CHATSITE_TEST_FSYNC_GATE holds every fsync
    of a chat file until the gate file exists, and marks a held one with `.waiting`)."""
    token = token_for(user)
    gate = tmp_path / "fsync-gate"
    gate.touch()  # open while the chat is created
    server = launch({**host(tmp_path, upstream), "CHATSITE_TEST_FSYNC_GATE": str(gate)}, token)
    chat_id = create_chat(server.url, token)
    gate.unlink()
    waiting = gate.with_name("fsync-gate.waiting")
    waiting.unlink(missing_ok=True)
    try:
        body = slow_body(token, chatfile=chat_id, repeat=40)  # 8 s
        response, lines = open_chat(server, body)
        next(lines)
        # The client stays: the first checkpoint comes 5 s in, and no fsync waited for the gate.
        assert [m["role"] for m in get_chat(server.url, token, chat_id)] == ["assistant"]
        assert wait_until(lambda: get_chat(server.url, token, chat_id)[-1]["content"], timeout=7)
        assert get_chat(server.url, token, chat_id)[-1]["incomplete"] is True
        assert not waiting.exists()
        # Search finds the chat's words once the answer is saved for good, not before.
        assert search_ids(server, token, "hello") == []
        assert wait_until(waiting.exists, timeout=15)  # the final save waits for its fsync
        assert search_ids(server, token, "hello") == []
    finally:
        gate.touch()
    assert list(lines)[-1]["done"] is True
    response.close()
    assert search_ids(server, token, "hello") == [chat_id]
    assert "incomplete" not in get_chat(server.url, token, chat_id)[-1]


def search_ids(server, token, q):
    answer = post(server, "/search-chats", {"token": token, "q": q})
    assert answer.status_code == 200, answer.text
    return [chat["id"] for chat in answer.json()["chats"]]
