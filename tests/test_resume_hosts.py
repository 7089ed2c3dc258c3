"""/resume on another host: two gunicorn masters (gevent workers) sharing Redis and the
database; an answer produced on host A is followed on host B through Redis Streams."""

import os
import signal
from collections.abc import Iterator

import pytest
import requests

from chatsite.streaming.linelog import LOST
from tests.helpers import (
    TIMEOUT,
    Stream,
    create_chat,
    get_chat,
    ndjson,
    numbered,
    site_env,
    slow_body,
)
from tests.servers import wait_until

LEASE_TTL = 2  # seconds: a killed host's answer is seen as lost this soon


@pytest.fixture
def hosts(tmp_path, launch, upstream, token_for, redis_prefix):
    """(host A, host B, a user's token): one Redis prefix, one database, one chat folder
    (as a database server and shared storage would be); each host its own lock folder."""
    redis_url, prefix = redis_prefix
    token = token_for()
    shared = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "LEASE_TTL": LEASE_TTL,
        "CHAT_DIR": str(tmp_path / "chats"),
    }
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    instances = [{"url": upstream.url, "max_concurrent": 4}]
    a, b = (
        launch(site_env(tmp_path / name, instances, database, **shared), token)
        for name in ("a", "b")
    )
    return a, b, token


def resume(url: str, token: str, chat: str, start: int = 0) -> Iterator[dict]:
    """POST /resume: its lines, checked to be numbered from `start` on, without their seq."""
    body = {"token": token, "chatId": chat, "from": start}
    response = requests.post(f"{url}/resume", json=body, stream=True, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return numbered(ndjson(response.iter_lines()), start)


def take(lines: Iterator[dict], count: int) -> list[dict]:
    """The next `count` lines (fewer if the last line comes first)."""
    taken = []
    for line in lines:
        taken.append(line)
        if len(taken) == count or line["done"]:
            break
    return taken


def test_resume_on_another_host_follows_live_to_the_same_last_line(hosts):
    """B redraws the answer from 0 and follows it live: the end, a /stop sent to B after B
    attached, reaches B as the same last line A's client gets."""
    a, b, token = hosts
    chat = create_chat(a.url, token)
    on_a = Stream(a.url, slow_body(token, chatfile=chat))  # 40 s unless stopped
    seen_on_a = [on_a.first, *take(on_a.lines, 2)]
    on_b = resume(b.url, token, chat)
    seen_on_b = take(on_b, len(seen_on_a) + 5)  # further than A had when B came
    stop = requests.post(f"{b.url}/stop", json={"token": token}, timeout=TIMEOUT)
    assert stop.status_code == 200, stop.text
    seen_on_a += list(on_a.lines)
    seen_on_b += list(on_b)
    assert seen_on_b == seen_on_a  # every line, same seq (both numbered), same last line
    last = seen_on_a[-1]
    assert last["done"] is True and last["stopped"] is True
    saved = get_chat(b.url, token, chat)[-1]
    assert saved["role"] == "assistant" and saved["incomplete"] is True
    assert saved["content"] == last["fullMsg"]


def test_resuming_from_a_seq_on_another_host_loses_and_doubles_nothing(hosts, upstream):
    """A's client goes after 3 lines; it resumes on B from the next seq: A's lines and B's
    make the whole answer, once each, and the chat is saved complete."""
    a, b, token = hosts
    chat = create_chat(a.url, token)
    on_a = Stream(a.url, slow_body(token, delay=0.02, repeat=25, chatfile=chat))
    before = [on_a.first, *take(on_a.lines, 2)]
    on_a.close()  # the connection drops; the answer goes on
    lines = before + list(resume(b.url, token, chat, len(before)))  # numbered from 3 on
    last = lines[-1]
    assert last["done"] is True and "stopped" not in last
    assert "".join(line["msg"] for line in lines) == last["fullMsg"]
    assert last["fullMsg"] == "You said: hello there" * 25  # the whole answer, to the end
    assert upstream.stats()["disconnected_streams"] == 0
    saved = get_chat(a.url, token, chat)[-1]
    assert saved["content"] == last["fullMsg"] and not saved.get("incomplete")
    again = list(resume(b.url, token, chat))  # within the keep time
    assert again == lines


def test_a_killed_producer_ends_the_resume_on_another_host_with_an_error(hosts):
    """SIGKILL of A's worker mid-answer: B's reader sees the lines so far, then an error."""
    a, b, token = hosts
    chat = create_chat(a.url, token)
    on_a = Stream(a.url, slow_body(token, chatfile=chat))
    take(on_a.lines, 3)
    on_b = resume(b.url, token, chat)
    followed = take(on_b, 4)
    [worker] = a.worker_pids()
    os.kill(worker, signal.SIGKILL)
    on_a.close()
    followed += list(on_b)  # numbered to the end, which comes within LEASE_TTL and a poll
    assert followed[-1] == {"status": "error", "msg": LOST, "done": True}
    assert all(line["status"] == "ok" for line in followed[:-1])
    assert wait_until(lambda: not generating(b.url, token), timeout=3 * LEASE_TTL)


def generating(url: str, token: str) -> bool:
    """Whether /settings shows a chat of the user generating."""
    response = requests.post(f"{url}/settings", json={"token": token}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return any(chat.get("generating") for chat in response.json()["chat_files"]["files"])
