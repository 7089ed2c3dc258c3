"""Chat instances that speak the OpenAI API (vLLM, SGLang, llama.cpp), over real HTTP against
the dev instance's /v1: what only this wire does (tool calls in fragments, finish reasons,
the sentinel, an API key, options it cannot carry), a chat moving between the kinds, and
both kinds in one pool. What both wires share runs for each in the other test files."""

import json
import logging

import pytest
import requests

from chatsite.dev.instance import DevInstance
from tests.helpers import (
    DEV_CAPABILITIES,
    Stream,
    chat_body,
    create_chat,
    get_chat,
    instance_entry,
    slow_body,
    stream,
    upstream_bodies,
)
from tests.servers import wait_until

ECHOED = {"status": "ok", "msg": "", "fullMsg": "You said: hello there", "done": True}
TIME_CALL = 'call current_time {"timezone": "UTC"}'
KEY = "sk-chatsite-test-0123456789abcdef"


@pytest.fixture
def openai_live(make_live, upstream):
    return make_live(CHAT_INSTANCES=[instance_entry(upstream, "openai")])


@pytest.mark.parametrize(
    "how",
    [{}, {"repeat_ids": True}, {"same_index": True}, {"repeat_ids": True, "same_index": True}],
)
def test_tool_calls_are_assembled_from_their_fragments(openai_live, token_for, upstream, how):
    """Two calls of one round, their arguments split every 3 characters (mid-string, mid-
    escape), from a server that repeats ids and names, or gives every call one index."""
    upstream.misbehave(**how)
    token = token_for()
    chat_id = create_chat(openai_live.url, token)
    expression = 'len("a\\"b")'  # an escape for the fragments to split
    ask = f"call calculate {json.dumps({'expression': expression})} and {TIME_CALL}"
    body = chat_body(token, ask, model="tooler", chatfile=chat_id)
    _, lines = stream(openai_live.url, "/chat", body)
    assert [line["tool"] for line in lines if "tool" in line] == ["calculate", "current_time"]
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    _, second = upstream_bodies(upstream, "openai")
    calls = second["messages"][-3]["tool_calls"]
    assert [json.loads(call["function"]["arguments"]) for call in calls] == [
        {"expression": expression},
        {"timezone": "UTC"},
    ]
    assert len({call["id"] for call in calls}) == 2
    results = second["messages"][-2:]
    assert [result["tool_call_id"] for result in results] == [call["id"] for call in calls]
    saved = get_chat(openai_live.url, token, chat_id)
    assert [m["role"] for m in saved] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c["function"]["name"] for c in saved[1]["tool_calls"]] == ["calculate", "current_time"]


def test_arguments_that_are_not_json_are_a_tool_error(openai_live, token_for, upstream):
    upstream.misbehave(bad_arguments=True)
    token = token_for()
    chat_id = create_chat(openai_live.url, token)
    ask = 'call calculate {"expression": "6*7"}'
    _, lines = stream(
        openai_live.url, "/chat", chat_body(token, ask, model="tooler", chatfile=chat_id)
    )
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    answer = upstream_bodies(upstream, "openai")[-1]["messages"][-1]["content"]
    assert answer.startswith("error: invalid arguments for calculate")
    saved = get_chat(openai_live.url, token, chat_id)
    assert saved[1]["tool_calls"][0]["function"] == {"name": "calculate", "arguments": {}}


def test_no_sentinel_after_the_finish_reason_is_a_normal_end(openai_live, token_for, upstream):
    upstream.misbehave(skip_sentinel=True)
    token = token_for()
    chat_id = create_chat(openai_live.url, token)
    _, lines = stream(openai_live.url, "/chat", chat_body(token, model="echo", chatfile=chat_id))
    assert lines[-1] == ECHOED
    assert "incomplete" not in get_chat(openai_live.url, token, chat_id)[-1]


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_an_abnormal_finish_reason_is_an_error_line(openai_live, token_for, upstream, reason):
    upstream.misbehave(finish_reason=reason)
    token = token_for()
    chat_id = create_chat(openai_live.url, token)
    _, lines = stream(openai_live.url, "/chat", chat_body(token, model="echo", chatfile=chat_id))
    assert "".join(line["msg"] for line in lines[:-1]) == "You said: hello there"
    assert lines[-1] == {"status": "error", "msg": "chat server error", "done": True}
    saved = get_chat(openai_live.url, token, chat_id)[-1]
    assert saved["content"] == "You said: hello there" and saved["incomplete"] is True
    body = {"token": token, "model": "echo", "prompt": "x"}
    _, lines = stream(openai_live.url, "/generate", body)
    assert lines[-1]["status"] == "error"


def test_an_answer_cut_by_the_token_limit_is_complete(openai_live, token_for):
    """finish_reason "length": the dev models cut their answer to `max_tokens` pieces."""
    kind_live = openai_live
    token = token_for()
    chat_id = create_chat(kind_live.url, token)
    body = chat_body(token, "one two three four", model="echo", chatfile=chat_id)
    body["options"] = {"num_predict": 2}
    _, lines = stream(kind_live.url, "/chat", body)
    assert lines[-1]["status"] == "ok" and lines[-1]["done"] is True
    assert 0 < len(lines[-1]["fullMsg"]) < len("You said: one two three four")
    assert "incomplete" not in get_chat(kind_live.url, token, chat_id)[-1]


def test_options_are_named_as_the_wire_names_them(openai_live, token_for, upstream):
    body = chat_body(token_for(), model="echo")
    options = {"num_predict": 5, "temperature": 0.5, "top_k": 7, "repeat_penalty": 1.1}
    _, lines = stream(openai_live.url, "/chat", {**body, "options": {**options, "stop": ["x"]}})
    assert lines[-1]["done"] is True
    sent = upstream_bodies(upstream, "openai")[-1]
    assert sent["max_tokens"] == 5 and "num_predict" not in sent and "options" not in sent
    assert (sent["temperature"], sent["top_k"], sent["repeat_penalty"]) == (0.5, 7, 1.1)
    assert sent["stop"] == ["x"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    # the dev knobs are allowed by the operator (ALLOWED_OPTIONS): they go as they are
    _, lines = stream(openai_live.url, "/chat", {**body, "options": {"dev_repeat": 2}})
    assert upstream_bodies(upstream, "openai")[-1]["dev_repeat"] == 2


def test_an_option_the_wire_cannot_carry_is_refused(make_live, token_for, upstream, kind):
    live = make_live(CHAT_INSTANCES=[instance_entry(upstream, kind)])
    body = {**chat_body(token_for(), model="echo"), "options": {"mirostat": 1}}
    response = requests.post(f"{live.url}/chat", json=body, timeout=10)
    if kind == "ollama":
        assert response.status_code == 200
        return
    assert response.status_code == 400
    assert response.json()["msg"].startswith("options.mirostat: not supported for model 'echo'")
    assert not upstream_bodies(upstream, "openai")


def test_models_show_null_for_what_the_api_does_not_tell(make_live, token_for, upstream):
    entry = instance_entry(upstream, "openai", models={"tooler": ["completion", "tools"]})
    live = make_live(CHAT_INSTANCES=[entry])
    models = requests.post(f"{live.url}/models", json={"token": token_for()}).json()["models"]
    by_name = {model["name"]: model for model in models}
    assert sorted(by_name) == sorted(DEV_CAPABILITIES)  # the ids, as the server lists them
    assert by_name["echo"] == {
        "name": "echo",
        "family": None,
        "parameter_size": None,
        "quantization_level": None,
        "size": None,
        "modified_at": None,
        "capabilities": ["completion"],  # not configured: completion only
    }
    assert by_name["tooler"]["capabilities"] == ["completion", "tools"]
    # a model is found by the name it has, or with Ollama's :latest, never sent so
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="echo:latest"))
    assert lines[-1] == ECHOED
    assert upstream_bodies(upstream, "openai")[-1]["model"] == "echo"


@pytest.mark.parametrize("first, then", [("ollama", "openai"), ("openai", "ollama")])
def test_a_saved_chat_moves_between_the_kinds(make_live, token_for, upstream, first, then):
    """A tool round saved from one wire goes to the other as /get-chat gave it back."""
    token = token_for()
    one = make_live(CHAT_INSTANCES=[instance_entry(upstream, first)])
    other = make_live(CHAT_INSTANCES=[instance_entry(upstream, then)])
    chat_id = create_chat(one.url, token)
    ask = chat_body(token, 'call calculate {"expression": "6*7"}', model="tooler", chatfile=chat_id)
    stream(one.url, "/chat", ask)
    history = [*get_chat(one.url, token, chat_id), {"role": "user", "content": TIME_CALL}]
    body = {"token": token, "model": "tooler", "messages": history, "chatfile": chat_id}
    _, lines = stream(other.url, "/chat", body)
    assert lines[-1]["status"] == "ok" and lines[-1]["done"] is True
    assert lines[-1]["fullMsg"].startswith("Tool current_time said: ")
    sent = upstream_bodies(upstream, then)[-2]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    if then == "openai":
        assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]
        arguments = sent[1]["tool_calls"][0]["function"]["arguments"]
        assert json.loads(arguments) == {"expression": "6*7"}
    else:
        assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"expression": "6*7"}
        assert sent[2]["tool_name"] == "calculate"
    saved = get_chat(other.url, token, chat_id)
    assert [m["role"] for m in saved] == ["user", "assistant", "tool", "assistant"] * 2


def test_both_kinds_in_one_pool(make_live, token_for):
    """One model on an Ollama instance and an OpenAI one: one model, one line, two slots;
    /stop ends the one on the OpenAI instance and closes its connection."""
    with DevInstance().start() as ollama, DevInstance().start() as openai:
        instances = [
            instance_entry(ollama, "ollama", max_concurrent=1),
            instance_entry(openai, "openai", max_concurrent=1),
        ]
        live = make_live(CHAT_INSTANCES=instances, INSTANCE_WAIT_TIMEOUT=0.5)
        listed = requests.post(f"{live.url}/models", json={"token": token_for()}).json()
        names = [model["name"] for model in listed["models"]]
        assert names.count("slow:latest") == 1 and "slow" not in names  # one model
        users = [token_for() for _ in range(3)]
        streams = [Stream(live.url, slow_body(users[0])), Stream(live.url, slow_body(users[1]))]
        assert ollama.stats()["active_streams"] == 1 and openai.stats()["active_streams"] == 1
        # both slots taken: the next request waits in the one line, then times out
        late = requests.post(f"{live.url}/chat", json=slow_body(users[2]), timeout=10)
        assert late.status_code == 504
        for index, token in enumerate(users[:2]):
            response = requests.post(f"{live.url}/stop", json={"token": token}, timeout=10)
            assert response.json() == {"status": "ok", "msg": "stopped"}
            last = list(streams[index].lines)[-1]
            assert last["stopped"] is True and last["done"] is True
        assert wait_until(lambda: openai.stats()["disconnected_streams"] == 1)
        assert wait_until(lambda: ollama.stats()["disconnected_streams"] == 1)


def test_the_api_key_is_sent_and_never_shown(make_live, token_for, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CHATSITE_TEST_OPENAI_KEY", KEY)
    monkeypatch.setenv("CHATSITE_TEST_WRONG_KEY", KEY[::-1])
    with DevInstance(api_key=KEY).start() as keyed:
        right = instance_entry(keyed, "openai", api_key_env="CHATSITE_TEST_OPENAI_KEY")
        wrong = instance_entry(keyed, "openai", api_key_env="CHATSITE_TEST_WRONG_KEY")
        live = make_live(CHAT_INSTANCES=[right])
        _, lines = stream(live.url, "/chat", chat_body(token_for(), model="echo"))
        assert lines[-1] == ECHOED  # the key was sent
        refused = make_live(CHAT_INSTANCES=[wrong])
        response = requests.post(f"{refused.url}/chat", json=chat_body(token_for(), model="echo"))
        assert response.status_code == 502  # the operator's to mend, not the client's
        assert response.json()["msg"] == "chat server refused chatsite's credentials"
        seen = [live.url, refused.url]
        shown = [
            requests.get(f"{url}/metrics", timeout=10).text + requests.get(f"{url}/healthz").text
            for url in seen
        ]
    assert not any(KEY in text or KEY[::-1] in text for text in shown)
    logged = [record.getMessage() for record in caplog.records]
    assert any("refused chatsite's credentials: HTTP 401" in message for message in logged)
    assert not any(KEY in message or KEY[::-1] in message for message in logged)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"url": "http://gpu1:8000/v1", "api": "grpc"}, "api of http://gpu1:8000/v1 must be"),
        ({"url": "http://gpu1:8000", "api": "openai"}, "ends in /v1"),
        (
            {"url": "http://gpu1:8000/v1", "api": "openai", "api_key_env": "NO_SUCH_VAR_21"},
            "NO_SUCH_VAR_21 is not set",
        ),
        (
            {"url": "http://gpu1:8000/v1", "api": "openai", "models": {"m": ["telepathy"]}},
            "unknown capability",
        ),
        ({"url": "http://gpu1:11434", "models": {"m": ["tools"]}}, "only an OpenAI API instance"),
        ({"url": "http://gpu1:11434", "max_concurent": 2}, "unknown field ['max_concurent']"),
    ],
)
def test_a_bad_instance_entry_stops_the_app(make_app, entry, message):
    with pytest.raises(ValueError, match="CHAT_INSTANCES: ") as error:
        make_app(CHAT_INSTANCES=[entry])
    assert message in str(error.value)
