"""The dev instance speaks Ollama's HTTP API with deterministic models; check it over real HTTP.

`dev` is the session's dev instance (conftest's `upstream`), its counters fresh for each test.
"""

import json
import socket

import pytest
import requests

from chatsite.dev.instance import MAX_BODY, parse_tool_calls
from tests.helpers import NDJSON, messages, ndjson
from tests.servers import wait_until

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.fixture
def dev(upstream):
    return upstream


def send(dev, path, body, **kwargs):
    return requests.post(dev.url + path, json=body, timeout=5, **kwargs)


def stream_lines(dev, path, body):
    with send(dev, path, body, stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == NDJSON
        assert resp.headers["Transfer-Encoding"] == "chunked"
        return list(ndjson(resp.iter_lines()))


def chat_text(lines):
    return "".join(line["message"]["content"] for line in lines if "message" in line)


def chat(dev, model, conversation, **extra):
    return stream_lines(dev, "/api/chat", {"model": model, "messages": conversation, **extra})


def test_root_and_version(dev):
    assert requests.get(dev.url + "/", timeout=5).text == "Ollama is running"
    assert requests.get(dev.url + "/api/version", timeout=5).json() == {"version": "0.0.0-dev"}


def test_tags_shape(dev):
    models = requests.get(dev.url + "/api/tags", timeout=5).json()["models"]
    names = {m["name"] for m in models}
    assert {
        "echo:latest",
        "coder:latest",
        "tooler:latest",
        "slow:latest",
        "broken:latest",
        "thinker:latest",
    } <= names
    echo = next(m for m in models if m["name"] == "echo:latest")
    assert echo["model"] == "echo:latest" and echo["modified_at"] == "2026-01-01T00:00:00Z"
    assert isinstance(echo["size"], int) and int(echo["digest"], 16) >= 0
    assert echo["details"]["format"] == "gguf" and echo["details"]["parameter_size"] == "1B"
    assert echo["details"]["quantization_level"] == "Q4_0"
    assert isinstance(echo["details"]["families"], list)


@pytest.mark.parametrize(
    ("body", "caps"),
    [
        ({"model": "echo"}, ["completion"]),
        ({"name": "coder:latest"}, ["completion", "insert"]),
        ({"model": "tooler"}, ["completion", "tools"]),
        ({"model": "thinker"}, ["completion", "thinking"]),
    ],
)
def test_show_capabilities(dev, body, caps):
    resp = send(dev, "/api/show", body)
    assert resp.status_code == 200
    data = resp.json()
    assert data["capabilities"] == caps
    assert data["details"]["format"] == "gguf" and data["model_info"] == {}
    assert data["modified_at"]


def test_ps_lists_the_models_used_recently(dev):
    """Like Ollama's /api/ps: a model is loaded once used, most recent first; reset unloads."""

    def loaded():
        return [m["name"] for m in requests.get(dev.url + "/api/ps", timeout=5).json()["models"]]

    assert loaded() == []
    chat(dev, "echo", messages("hi"))
    send(dev, "/api/generate", {"model": "coder", "prompt": "x", "stream": False})
    assert loaded() == ["coder:latest", "echo:latest"]
    entry = requests.get(dev.url + "/api/ps", timeout=5).json()["models"][0]
    assert entry["expires_at"].endswith("Z") and entry["size_vram"] == entry["size"]
    dev.load("slow")
    assert loaded()[0] == "slow:latest"
    dev.reset()
    assert loaded() == []


def test_unknown_models_404(dev):
    resp = send(dev, "/api/show", {"model": "nope"})
    assert resp.status_code == 404 and resp.json() == {"error": "model 'nope' not found"}
    resp = send(dev, "/api/chat", {"model": "nope", "messages": messages("hi")})
    assert resp.status_code == 404
    assert resp.json() == {"error": 'model "nope" not found, try pulling it first'}
    assert send(dev, "/api/generate", {"model": "echo:v2", "prompt": "x"}).status_code == 404


def test_chat_echo_streams_words(dev):
    lines = chat(dev, "echo", messages("hello  big\nworld "))
    pieces = [line["message"]["content"] for line in lines[:-1]]
    assert pieces == ["You ", "said: ", "hello  ", "big\n", "world "]
    assert all(not line["done"] and line["model"] == "echo:latest" for line in lines[:-1])
    assert all(line["message"]["role"] == "assistant" for line in lines)
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert last["eval_count"] == 5 and last["total_duration"] > 0
    for key in ("load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[key], int)


def test_chat_system_prompt_prefix_and_last_user_message(dev):
    conversation = [{"role": "system", "content": "be brief"}, *messages("first", "ok", "second")]
    assert chat_text(chat(dev, "echo:latest", conversation)) == "[be brief] You said: second"
    assert chat_text(chat(dev, "thinker", messages("hm"))) == "You said: hm"


def test_generate_echo_and_system(dev):
    lines = stream_lines(dev, "/api/generate", {"model": "echo", "prompt": "a b c"})
    assert [line["response"] for line in lines] == ["a ", "b ", "c", ""]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    lines = stream_lines(dev, "/api/generate", {"model": "echo", "prompt": "x", "system": "S"})
    assert "".join(line["response"] for line in lines) == "[S] x"


def test_generate_empty_output_still_has_done_line(dev):
    lines = stream_lines(dev, "/api/generate", {"model": "echo", "prompt": ""})
    assert len(lines) == 1 and lines[0]["done"] is True and lines[0]["response"] == ""


def test_coder_fill_in_the_middle(dev):
    prompt, suffix = "def add(a, b):\n    return", "\n\nprint(add(1, 2))  # three"
    lines = stream_lines(dev, "/api/generate", {"model": "coder", "prompt": prompt})
    assert "".join(line["response"] for line in lines) == "continuing: " + prompt
    body = {"model": "coder:latest", "prompt": prompt, "suffix": suffix}
    lines = stream_lines(dev, "/api/generate", body)
    expected = f"<fill between {prompt[-20:]!r} and {suffix[:20]!r}>"
    assert "".join(line["response"] for line in lines) == expected


def test_suffix_needs_insert_capability(dev):
    resp = send(dev, "/api/generate", {"model": "echo", "prompt": "a", "suffix": "b"})
    assert resp.status_code == 400
    error = "registry.ollama.ai/library/echo:latest does not support insert"
    assert resp.json() == {"error": error}


def test_tooler_emits_tool_calls(dev):
    text = 'please call get_weather {"city": "Paris", "opts": {"unit": "C"}} and call now'
    lines = chat(dev, "tooler", messages(text), tools=TOOLS)
    assert len(lines) == 2 and lines[0]["done"] is False and lines[1]["done"] is True
    message = lines[0]["message"]
    assert message["role"] == "assistant" and message["content"] == ""
    assert message["tool_calls"] == [
        {
            "function": {
                "name": "get_weather",
                "arguments": {"city": "Paris", "opts": {"unit": "C"}},
            }
        },
        {"function": {"name": "now", "arguments": {}}},
    ]


def test_tooler_without_tools_offered_echoes(dev):
    assert chat_text(chat(dev, "tooler", messages("call x"))) == "You said: call x"


def test_tooler_answers_tool_messages(dev):
    conversation = [
        *messages("call a and call b"),
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "tool", "tool_name": "a", "content": "1"},
        {"role": "tool", "content": "2"},
    ]
    assert (
        chat_text(chat(dev, "tooler", conversation, tools=TOOLS))
        == "Tool a said: 1; Tool ? said: 2"
    )


def test_tools_need_tools_capability(dev):
    resp = send(dev, "/api/chat", {"model": "echo", "messages": messages("call x"), "tools": TOOLS})
    assert resp.status_code == 400
    error = "registry.ollama.ai/library/echo:latest does not support tools"
    assert resp.json() == {"error": error}


def test_parse_tool_calls_ignores_calls_inside_arguments():
    calls = parse_tool_calls('call a {"q": "call b {}"} then call c {bad json')
    assert [c["function"]["name"] for c in calls] == ["a", "c"]
    assert calls[0]["function"]["arguments"] == {"q": "call b {}"}
    assert calls[1]["function"]["arguments"] == {}


def test_broken_model_errors_after_three_pieces(dev):
    lines = chat(dev, "broken", messages("x"))
    assert [line["message"]["content"] for line in lines[:3]] == ["You ", "said: ", "x"]
    assert lines[3:] == [{"error": "model runner crashed"}]
    lines = stream_lines(dev, "/api/generate", {"model": "broken", "prompt": "hi"})
    assert [line.get("response") for line in lines] == ["hi", "tick ", "tick ", None]
    # the server counts a stream as completed just after its last byte: poll, do not race
    assert wait_until(lambda: dev.stats()["completed_streams"] == 2)


def test_dev_repeat_makes_long_streams(dev):
    lines = chat(
        dev, "echo", messages("ab"), options={"dev_repeat": 3, "temperature": 0.2, "seed": 1}
    )
    assert chat_text(lines) == "You said: ab" * 3
    assert lines[-1]["eval_count"] == len(lines) - 1


def test_stream_false_returns_one_object(dev):
    resp = send(dev, "/api/chat", {"model": "echo", "messages": messages("hi"), "stream": False})
    assert resp.status_code == 200 and "Content-Length" in resp.headers
    data = resp.json()
    assert data["message"] == {"role": "assistant", "content": "You said: hi"}
    assert data["done"] is True and data["done_reason"] == "stop"
    data = send(dev, "/api/generate", {"model": "coder", "prompt": "x", "stream": False}).json()
    assert data["response"] == "continuing: x" and data["done"] is True
    data = send(
        dev,
        "/api/chat",
        {
            "model": "tooler",
            "messages": messages('call f {"a": 1}'),
            "tools": TOOLS,
            "stream": False,
        },
    ).json()
    assert data["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]


def test_token_delay_option(dev):
    body = {"model": "echo", "messages": messages("a b"), "options": {"dev_token_delay": 0.05}}
    with send(dev, "/api/chat", body, stream=True) as resp:
        lines = ndjson(resp.iter_lines())
        first = next(lines)
        # Without a delay echo sends its four tokens at once; with one, three are still to come.
        stats = dev.stats()
        assert stats["active_streams"] == 1 and stats["completed_streams"] == 0
        rest = list(lines)
    assert chat_text([first, *rest]) == "You said: a b"
    assert len(rest) == 4 and rest[-1]["done"] is True
    assert wait_until(lambda: dev.stats()["completed_streams"] == 1)


def test_client_disconnect_is_detected(dev):
    body = {
        "model": "slow",
        "messages": messages("tick tock"),
        "options": {"dev_token_delay": 0.05, "dev_repeat": 50},
    }
    resp = send(dev, "/api/chat", body, stream=True)
    assert json.loads(next(resp.iter_lines()))["done"] is False
    resp.close()

    def gone():
        stats = dev.stats()
        return stats["disconnected_streams"] == 1 and stats["active_streams"] == 0

    assert wait_until(gone)
    stats = dev.stats()
    assert stats["completed_streams"] == 0
    assert requests.get(dev.url + "/dev/stats", timeout=5).json() == dev.stats()


def test_fail_injection(dev):
    resp = send(dev, "/dev/fail", {"status": 503, "count": 2})
    assert resp.status_code == 200
    for _ in range(2):
        resp = requests.get(dev.url + "/api/tags", timeout=5)
        assert resp.status_code == 503 and resp.json() == {"error": "injected failure"}
    assert requests.get(dev.url + "/api/tags", timeout=5).status_code == 200
    dev.fail_next(429, 1)
    assert send(dev, "/api/chat", {"model": "echo", "messages": []}).status_code == 429
    assert send(dev, "/api/chat", {"model": "echo", "messages": []}).status_code == 200


def test_request_records_and_reset(dev):
    send(dev, "/api/show", {"model": "echo"})
    requests.get(dev.url + "/api/tags", timeout=5)
    records = requests.get(dev.url + "/dev/requests", timeout=5).json()["requests"]
    assert records == [
        {"path": "/api/show", "body": {"model": "echo"}},
        {"path": "/api/tags", "body": None},
    ]
    assert dev.stats()["requests"] == 2
    assert send(dev, "/dev/reset", None).status_code == 200
    assert dev.requests() == [] and dev.stats()["requests"] == 0


def test_huge_body_gets_413(dev):
    resp = requests.post(
        dev.url + "/api/chat",
        data=b" " * (MAX_BODY + 1),
        timeout=5,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 413 and "error" in resp.json()


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/api/chat", b"{not json"),
        ("/api/generate", b"[1]"),
        ("/api/chat", b""),
        ("/api/generate", b'{"prompt": "x"}'),
        ("/api/chat", b'{"model": "echo", "messages": 3}'),
        ("/api/chat", b'{"model": "echo", "options": {"dev_repeat": "x"}}'),
    ],
)
def test_bad_requests_get_400(dev, path, data):
    resp = requests.post(dev.url + path, data=data, timeout=5)
    assert resp.status_code == 400 and isinstance(resp.json()["error"], str)


def test_keep_alive_and_chunk_framing(dev):
    body = json.dumps({"model": "echo", "messages": messages("hi")}).encode()
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(dev.server.server_address[:2], timeout=5) as sock:
        sock.sendall(request + b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b'{"version": "0.0.0-dev"}'):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    first, second = data.split(b"0\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in first and b'"done": true' in first
    assert second.startswith(b"HTTP/1.1 200 ")


def test_thinker_thinks_before_it_answers_unless_told_not_to(dev):
    lines = chat(dev, "thinker", messages("hm"))
    thinking = [line["message"].get("thinking", "") for line in lines if "message" in line]
    assert "".join(thinking) == "The user wrote 'hm'; I will echo it. "
    first_text = next(i for i, line in enumerate(lines) if line["message"]["content"])
    assert all(not t for t in thinking[first_text:])
    assert chat_text(lines) == "You said: hm"
    lines = chat(dev, "thinker", messages("hm"), think=False)
    assert not any(line["message"].get("thinking") for line in lines)
    resp = send(dev, "/api/chat", {"model": "echo", "messages": messages("x"), "think": True})
    assert resp.status_code == 400
    assert resp.json() == {
        "error": '"registry.ollama.ai/library/echo:latest" does not support thinking'
    }


def test_misbehave_endpoint(dev):
    assert send(dev, "/dev/misbehave", {"tags": [1, 2, 3], "show": "x"}).status_code == 200
    assert requests.get(dev.url + "/api/tags", timeout=5).json() == [1, 2, 3]
    assert send(dev, "/api/show", {"model": "echo"}).json() == "x"
    assert send(dev, "/dev/misbehave", {"skip_done": True}).status_code == 200
    assert not any(line.get("done") for line in chat(dev, "echo", messages("x")))
    assert requests.get(dev.url + "/api/tags", timeout=5).json()["models"]  # replaced
    for bad in ({"nonsense": 1}, {"linger": -1}, {"linger": "x"}, {"skip_done": 1}):
        assert send(dev, "/dev/misbehave", bad).status_code == 400
    send(dev, "/dev/reset", {})
    assert chat(dev, "echo", messages("x"))[-1]["done"] is True


def test_fail_injection_with_an_error_text(dev):
    send(dev, "/dev/fail", {"status": 500, "count": 1, "error": "disk on fire"})
    resp = send(dev, "/api/chat", {"model": "echo", "messages": messages("x")})
    assert (resp.status_code, resp.json()) == (500, {"error": "disk on fire"})
