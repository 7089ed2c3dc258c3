"""The dev instance speaks Ollama's HTTP API with deterministic models; check it over real HTTP."""

import json
import socket
import time

import pytest
import requests

from chatsite.dev.instance import MAX_BODY, DevInstance, parse_tool_calls
from tests.servers import wait_until

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.fixture(scope="module")
def instance():
    with DevInstance() as inst:
        yield inst


@pytest.fixture
def dev(instance):
    instance.reset()
    return instance


def send(dev, path, body, **kwargs):
    return requests.post(dev.url + path, json=body, timeout=5, **kwargs)


def stream_lines(dev, path, body):
    with send(dev, path, body, stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        return [json.loads(line) for line in resp.iter_lines() if line]


def chat_text(lines):
    return "".join(line["message"]["content"] for line in lines if "message" in line)


def chat(dev, model, messages, **extra):
    return stream_lines(dev, "/api/chat", {"model": model, "messages": messages, **extra})


def ask(text):
    return [{"role": "user", "content": text}]


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
    chat(dev, "echo", ask("hi"))
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
    resp = send(dev, "/api/chat", {"model": "nope", "messages": ask("hi")})
    assert resp.status_code == 404
    assert resp.json() == {"error": 'model "nope" not found, try pulling it first'}
    assert send(dev, "/api/generate", {"model": "echo:v2", "prompt": "x"}).status_code == 404


def test_chat_echo_streams_words(dev):
    lines = chat(dev, "echo", ask("hello  big\nworld "))
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
    messages = [
        {"role": "system", "content": "be brief"},
        *ask("first"),
        {"role": "assistant", "content": "ok"},
        *ask("second"),
    ]
    assert chat_text(chat(dev, "echo:latest", messages)) == "[be brief] You said: second"
    assert chat_text(chat(dev, "thinker", ask("hm"))) == "You said: hm"


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
    lines = chat(dev, "tooler", ask(text), tools=TOOLS)
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
    assert chat_text(chat(dev, "tooler", ask("call x"))) == "You said: call x"


def test_tooler_answers_tool_messages(dev):
    messages = [
        *ask("call a and call b"),
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "tool", "tool_name": "a", "content": "1"},
        {"role": "tool", "content": "2"},
    ]
    assert chat_text(chat(dev, "tooler", messages, tools=TOOLS)) == "Tool a said: 1; Tool ? said: 2"


def test_tools_need_tools_capability(dev):
    resp = send(dev, "/api/chat", {"model": "echo", "messages": ask("call x"), "tools": TOOLS})
    assert resp.status_code == 400
    error = "registry.ollama.ai/library/echo:latest does not support tools"
    assert resp.json() == {"error": error}


def test_parse_tool_calls_ignores_calls_inside_arguments():
    calls = parse_tool_calls('call a {"q": "call b {}"} then call c {bad json')
    assert [c["function"]["name"] for c in calls] == ["a", "c"]
    assert calls[0]["function"]["arguments"] == {"q": "call b {}"}
    assert calls[1]["function"]["arguments"] == {}


def test_broken_model_errors_after_three_pieces(dev):
    lines = chat(dev, "broken", ask("x"))
    assert [line["message"]["content"] for line in lines[:3]] == ["You ", "said: ", "x"]
    assert lines[3:] == [{"error": "model runner crashed"}]
    lines = stream_lines(dev, "/api/generate", {"model": "broken", "prompt": "hi"})
    assert [line.get("response") for line in lines] == ["hi", "tick ", "tick ", None]
    # the server counts a stream as completed just after its last byte: poll, do not race
    assert wait_until(lambda: dev.stats()["completed_streams"] == 2)


def test_dev_repeat_makes_long_streams(dev):
    lines = chat(dev, "echo", ask("ab"), options={"dev_repeat": 3, "temperature": 0.2, "seed": 1})
    assert chat_text(lines) == "You said: ab" * 3
    assert lines[-1]["eval_count"] == len(lines) - 1


def test_stream_false_returns_one_object(dev):
    resp = send(dev, "/api/chat", {"model": "echo", "messages": ask("hi"), "stream": False})
    assert resp.status_code == 200 and "Content-Length" in resp.headers
    data = resp.json()
    assert data["message"] == {"role": "assistant", "content": "You said: hi"}
    assert data["done"] is True and data["done_reason"] == "stop"
    data = send(dev, "/api/generate", {"model": "coder", "prompt": "x", "stream": False}).json()
    assert data["response"] == "continuing: x" and data["done"] is True
    data = send(
        dev,
        "/api/chat",
        {"model": "tooler", "messages": ask('call f {"a": 1}'), "tools": TOOLS, "stream": False},
    ).json()
    assert data["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]


def test_token_delay_option(dev):
    started = time.monotonic()
    chat(dev, "echo", ask("a b"), options={"dev_token_delay": 0.05})
    assert time.monotonic() - started >= 0.2  # four tokens


def test_client_disconnect_is_detected(dev):
    body = {
        "model": "slow",
        "messages": ask("tick tock"),
        "options": {"dev_token_delay": 0.05, "dev_repeat": 50},
    }
    resp = send(dev, "/api/chat", body, stream=True)
    assert json.loads(next(resp.iter_lines()))["done"] is False
    resp.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        stats = dev.stats()
        if stats["disconnected_streams"] == 1 and stats["active_streams"] == 0:
            break
        time.sleep(0.05)
    assert stats["disconnected_streams"] == 1 and stats["active_streams"] == 0
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
    body = json.dumps({"model": "echo", "messages": ask("hi")}).encode()
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
