"""Thinking models over real HTTP: thinking is relayed as it comes, saved, passed back, and a
client that leaves while the model thinks stops it (gunicorn with gevent workers)."""

import json

import pytest
import requests

from chatsite.dev.instance import thinking_for
from tests.helpers import (
    CHAT_PATHS,
    chat_body,
    create_chat,
    get_chat,
    instance_entry,
    site_env,
    stream,
)
from tests.servers import wait_until

ECHOED = {"status": "ok", "msg": "", "fullMsg": "You said: hello there", "done": True}
THOUGHT = thinking_for([{"role": "user", "content": "hello there"}])


# Where OpenAI API servers put reasoning (the dev instance's `reasoning_field`).
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


def sent_to_instance(upstream, kind="ollama"):
    return [r["body"] for r in upstream.requests() if r["path"] == CHAT_PATHS[kind]][-1]


def think_sent(body, kind):
    """The thinking switch the instance was sent: Ollama's `think`, or vLLM's template one."""
    if kind == "openai":
        return body.get("chat_template_kwargs", {}).get("enable_thinking")
    return body.get("think")


@pytest.fixture(params=[("ollama", None), *(("openai", name) for name in REASONING_FIELDS)])
def thinking_live(request, make_live, upstream):
    """A live app whose instance speaks each kind, and each reasoning field of OpenAI's."""
    kind, field = request.param
    if field is not None:
        upstream.misbehave(reasoning_field=field)
    live = make_live(CHAT_INSTANCES=[instance_entry(upstream, kind)])
    live.kind = kind
    return live


def test_thinking_is_relayed_before_the_reply(thinking_live, token_for, upstream):
    live = thinking_live
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
    assert think_sent(sent_to_instance(upstream, live.kind), live.kind) is None  # its default


def test_think_passes_through(kind_live, token_for, upstream, kind):
    live = kind_live
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="thinker", think=False))
    assert think_sent(sent_to_instance(upstream, kind), kind) is False
    assert not any("thinking" in line for line in lines)
    assert lines[-1]["fullMsg"] == "You said: hello there"
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="thinker", think=True))
    assert think_sent(sent_to_instance(upstream, kind), kind) is True
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


def test_thinking_is_saved_and_sent_back(thinking_live, token_for, upstream):
    live, kind = thinking_live, thinking_live.kind
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
    # The OpenAI API takes no reasoning back (chat templates drop it): the text alone.
    thought = {"thinking": THOUGHT} if kind == "ollama" else {}
    assert sent_to_instance(upstream, kind)["messages"][1] == {
        "role": "assistant",
        "content": "You said: hello there",
        **thought,
    }


def test_a_client_leaving_while_the_model_thinks_stops_it(
    launch, upstream, token_for, tmp_path, kind
):
    token = token_for()
    server = launch(site_env(tmp_path, [instance_entry(upstream, kind)]), token)
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
