"""What /chat saves, over real HTTP: it can always be sent back, each text is saved once, and
its timestamps never go backwards."""

import json

import orjson
import pytest
import requests

from chatsite.tools import ToolContext
from tests.helpers import chat_body, create_chat, get_chat, stream

STOPPED = "[stopped: the reply reached its length limit]"


def fail_next_answer(context: ToolContext, url: str) -> str:
    """Make the dev chat instance at `url` fail its next answer (a tool for the tests; it
    runs in a tool process, so it asks over HTTP).

    Args:
        url: The dev instance's base URL.
    """
    requests.post(f"{url}/dev/fail", json={"status": 500, "count": 1}, timeout=5).raise_for_status()
    return "armed"


def send_back(url, token, contents, **extra):
    """POST a chat as a browser does: compact UTF-8 JSON."""
    body = {"token": token, "model": "echo", "messages": contents, **extra}
    headers = {"Content-Type": "application/json"}
    return requests.post(
        f"{url}/chat", data=orjson.dumps(body), headers=headers, stream=True, timeout=30
    )


def test_a_long_reply_is_saved_and_sent_back_as_it_is(live, token_for):
    token = token_for()
    chat_id = create_chat(live.url, token)
    words = "lorem " * 16_665  # 99,990 characters: the echo is longer than a message may be
    _, lines = stream(live.url, "/chat", chat_body(token, words, model="echo", chatfile=chat_id))
    reply = lines[-1]["fullMsg"]
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    assert reply.startswith("You said: lorem") and reply.endswith(STOPPED)
    assert len(reply) <= 100_000
    contents = get_chat(live.url, token, chat_id)
    assert contents[-1]["content"] == reply and "incomplete" not in contents[-1]

    response = send_back(live.url, token, contents, chatfile=chat_id)
    assert response.status_code == 200
    last = json.loads([line for line in response.iter_lines() if line][-1])
    assert last["done"] is True and last["status"] == "ok"


@pytest.mark.parametrize("word", ["lorem ", "\u00e9\U0001f600\u0001 "], ids=["ascii", "escaped"])
def test_a_saved_chat_stays_within_the_body_limit(make_live, token_for, upstream, word):
    live = make_live(MAX_CONTENT_LENGTH=64 * 1024)  # 48 KiB for the messages of a chat
    token = token_for()
    chat_id = create_chat(live.url, token)
    words = word * (30_000 // (len(orjson.dumps(word)) - 2))  # 30 KB asked, 30 KB echoed
    _, lines = stream(live.url, "/chat", chat_body(token, words, model="echo", chatfile=chat_id))
    assert lines[-1]["done"] is True and lines[-1]["fullMsg"].endswith(STOPPED)
    contents = get_chat(live.url, token, chat_id)
    assert len(orjson.dumps(contents)) <= 48 * 1024

    # The saved chat is a body /chat accepts, as it is ...
    response = send_back(live.url, token, contents)
    assert response.status_code == 200
    response.close()
    # ... but it is full: continuing it in its chat file is refused before anything starts.
    calls = len(upstream.requests())
    response = send_back(live.url, token, contents, chatfile=chat_id)
    assert response.status_code == 400
    assert response.json()["msg"].startswith("messages: the chat has reached its size limit")
    assert "start a new chat" in response.json()["msg"]
    assert len(upstream.requests()) == calls


def test_a_chat_with_as_many_messages_as_allowed_is_refused_up_front(make_live, token_for):
    live = make_live(MAX_MESSAGES=3)
    token = token_for()
    chat_id = create_chat(live.url, token)
    messages = [{"role": "user", "content": "x"}] * 3
    response = send_back(live.url, token, messages, chatfile=chat_id)
    assert response.status_code == 400
    assert "at most 3 messages" in response.json()["msg"]
    response = send_back(live.url, token, messages[:2], chatfile=chat_id)
    assert response.status_code == 200
    response.close()


def test_a_tool_round_that_would_overfill_the_chat_is_not_run(make_live, token_for, upstream):
    live = make_live(MAX_MESSAGES=4)  # the request, a tool call, 2 results and a reply are 5
    token = token_for()
    chat_id = create_chat(live.url, token)
    ask = 'call calculate {"expression": "1+1"} and call calculate {"expression": "2"}'
    body = {"token": token, "model": "tooler", "messages": [{"role": "user", "content": ask}]}
    _, lines = stream(live.url, "/chat", {**body, "chatfile": chat_id})
    assert not any("tool" in line for line in lines)
    assert lines[-1]["done"] is True and lines[-1]["fullMsg"].endswith(STOPPED)
    contents = get_chat(live.url, token, chat_id)
    assert len(contents) == 2
    response = send_back(live.url, token, contents, model="tooler")
    assert response.status_code == 200
    response.close()


def test_a_reply_cut_after_a_tool_round_saves_each_text_once(make_live, token_for, upstream):
    live = make_live(TOOLS=["tests.test_saved_chats:fail_next_answer"])
    token = token_for()
    chat_id = create_chat(live.url, token)
    ask = f'say "Let me see." call fail_next_answer {{"url": "{upstream.url}"}}'
    body = {"token": token, "model": "tooler", "messages": [{"role": "user", "content": ask}]}
    _, lines = stream(live.url, "/chat", {**body, "chatfile": chat_id})
    assert lines[-1]["status"] == "error" and lines[-1]["done"] is True
    contents = get_chat(live.url, token, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant", "tool", "assistant"]
    assert contents[1]["content"] == "Let me see."  # with its tool call, and only there
    assert contents[3] == {
        "role": "assistant",
        "content": "",
        "timestamp": contents[3]["timestamp"],
        "incomplete": True,
    }


@pytest.mark.parametrize("sent_stamp", [None, "2999-01-01T00:00:00.000Z"])
def test_timestamps_never_go_backwards(make_live, token_for, sent_stamp):
    live = make_live(TOOLS=["tests.tool_examples:slow_tool"])
    token = token_for()
    chat_id = create_chat(live.url, token)
    ask = {"role": "user", "content": 'call slow_tool {"seconds": 0.05}'}
    if sent_stamp:
        ask["timestamp"] = sent_stamp
    body = {"token": token, "model": "tooler", "messages": [ask], "chatfile": chat_id}
    _, lines = stream(live.url, "/chat", body)
    assert lines[-1]["done"] is True
    stamps = [m["timestamp"] for m in get_chat(live.url, token, chat_id)]
    assert len(stamps) == 4 and stamps == sorted(stamps)
    if sent_stamp:
        assert stamps[0] == sent_stamp


def test_a_round_of_too_many_tool_calls_is_saved_within_the_cap(live, token_for):
    token = token_for()
    chat_id = create_chat(live.url, token)
    ask = " ".join(["call current_time"] * 40)
    body = {"token": token, "model": "tooler", "messages": [{"role": "user", "content": ask}]}
    _, lines = stream(live.url, "/chat", {**body, "chatfile": chat_id})
    assert lines[-1]["done"] is True
    contents = get_chat(live.url, token, chat_id)
    assert len(contents[1]["tool_calls"]) == 32
    assert [m["role"] for m in contents[2:]] == ["tool"] * 32 + ["assistant"]
    response = send_back(live.url, token, contents, model="tooler", chatfile=chat_id)
    assert response.status_code == 200
    response.close()
