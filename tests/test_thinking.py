"""Thinking models over real HTTP: thinking is relayed as it comes, saved, passed back, and a
client that leaves while the model thinks stops it (gunicorn with gevent workers)."""

import json

import requests

from chatsite.dev.instance import thinking_for
from tests.helpers import chat_body, create_chat, get_chat, site_env, stream
from tests.servers import wait_until

ECHOED = {"status": "ok", "msg": "", "fullMsg": "You said: hello there", "done": True}
THOUGHT = thinking_for([{"role": "user", "content": "hello there"}])


def sent_to_instance(upstream):
    return [r["body"] for r in upstream.requests() if r["path"] == "/api/chat"][-1]


def test_thinking_is_relayed_before_the_reply(live, token_for, upstream):
    response, lines = stream(live.url, "/chat", chat_body(token_for(), model="thinker"))
    assert response.status_code == 200
    thinking = [i for i, line in enumerate(lines) if "thinking" in line]
    text = [i for i, line in enumerate(lines) if line.get("msg")]
    assert thinking and text and max(thinking) < min(text)
    for index in thinking:
        assert set(lines[index]) == {"status", "msg", "thinking", "done"}
        assert lines[index]["status"] == "ok" and lines[index]["msg"] == ""
        assert lines[index]["done"] is False
    assert "".join(lines[i]["thinking"] for i in thinking) == THOUGHT
    # thinking is not part of the reply
    assert lines[-1] == ECHOED
    assert "think" not in sent_to_instance(upstream)  # the model's own default


def test_think_passes_through(live, token_for, upstream):
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="thinker", think=False))
    assert sent_to_instance(upstream)["think"] is False
    assert not any("thinking" in line for line in lines)
    assert lines[-1]["fullMsg"] == "You said: hello there"
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="thinker", think=True))
    assert sent_to_instance(upstream)["think"] is True
    assert "".join(line.get("thinking", "") for line in lines) == THOUGHT


def test_think_must_be_a_boolean_for_a_model_that_thinks(live, token_for, upstream):
    for body in (
        chat_body(token_for(), model="thinker", think="yes"),
        chat_body(token_for(), model="thinker", think=1),
        chat_body(token_for(), model="echo", think=True),
    ):
        response = requests.post(f"{live.url}/chat", json=body)
        assert response.status_code == 400
        assert response.json()["msg"].startswith("think")
    assert not [r for r in upstream.requests() if r["path"] == "/api/chat"]
    # think=false asks nothing of a model that does not think
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="echo", think=False))
    assert lines[-1]["done"] is True
    assert "think" not in sent_to_instance(upstream)


def test_thinking_is_saved_and_sent_back(live, token_for, upstream):
    token = token_for()
    chat_id = create_chat(live.url, token)
    stream(live.url, "/chat", chat_body(token, model="thinker", chatfile=chat_id))
    contents = get_chat(live.url, token, chat_id)
    assert contents[-1]["role"] == "assistant"
    assert contents[-1]["thinking"] == THOUGHT
    assert contents[-1]["content"] == "You said: hello there"
    history = [*contents, {"role": "user", "content": "more"}]
    body = {"token": token, "model": "thinker", "messages": history, "chatfile": chat_id}
    response, lines = stream(live.url, "/chat", body)
    assert response.status_code == 200 and lines[-1]["done"] is True
    assert sent_to_instance(upstream)["messages"][1] == {
        "role": "assistant",
        "content": "You said: hello there",
        "thinking": THOUGHT,
    }


def test_a_client_leaving_while_the_model_thinks_stops_it(launch, upstream, token_for, tmp_path):
    token = token_for()
    server = launch(site_env(tmp_path, [upstream.url]), token)
    slow = {"dev_token_delay": 0.05, "dev_repeat": 200}  # minutes of thinking
    body = chat_body(token, model="thinker", options=slow)
    response = requests.post(f"{server.url}/chat", json=body, stream=True, timeout=10)
    assert response.status_code == 200
    first = json.loads(next(response.iter_lines()))
    assert first["thinking"] and first["done"] is False  # relayed the moment it came
    response.close()
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1)  # the GPU stops

    def user_is_free() -> bool:
        body = chat_body(token, model="echo")
        return requests.post(f"{server.url}/chat", json=body, timeout=10).status_code == 200

    assert wait_until(user_is_free)
