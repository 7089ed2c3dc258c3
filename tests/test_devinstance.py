"""The dev instance speaks Ollama's HTTP API and OpenAI's (under /v1) with deterministic models;
check both over real HTTP.

`dev` is the session's dev instance (conftest's `upstream`), its counters fresh for each test.
"""

import json
import socket

import pytest
import requests

from chatsite.dev.instance import MAX_BODY, DevInstance, parse_tool_calls
from tests.helpers import NDJSON, messages, ndjson
from tests.servers import wait_until

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
SSE = "text/event-stream"
CHAT = "/v1/chat/completions"


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


def error_of(resp):
    """The error's message, after checking the error shape of the wire that was called."""
    error = resp.json()["error"]
    if "/v1/" in resp.url:
        assert set(error) == {"message", "type", "code"}
        return error["message"]
    return error


def sse(data):
    """Parse a whole event stream, checking its framing: `data: <json>` events, blank-line ended."""
    *events, rest = data.split(b"\n\n")
    assert rest == b"", data
    parsed = []
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event, event
        payload = event.removeprefix(b"data: ")
        parsed.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return parsed


def stream_events(dev, path, body, **kwargs):
    """POST a streamed OpenAI request; return its events (JSON objects, then "[DONE]")."""
    with send(dev, path, {**body, "stream": True}, stream=True, **kwargs) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == SSE
        assert resp.headers["Transfer-Encoding"] == "chunked"
        return sse(resp.content)


def openai_chat(dev, model, conversation, **extra):
    return stream_events(dev, CHAT, {"model": model, "messages": conversation, **extra})


def deltas(events):
    return [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e.get("choices")]


def openai_text(events):
    return "".join(delta.get("content") or "" for delta in deltas(events))


def finish_reasons(events):
    return [
        e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")
    ]


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


@pytest.mark.parametrize(
    ("path", "body", "unfinished"),
    [
        (
            "/api/chat",
            {"options": {"dev_token_delay": 0.05, "dev_repeat": 50}},
            lambda line: json.loads(line)["done"] is False,
        ),
        (
            CHAT,
            {"stream": True, "dev_token_delay": 0.05, "dev_repeat": 50},
            lambda line: (
                json.loads(line.removeprefix(b"data: "))["choices"][0]["finish_reason"] is None
            ),
        ),
    ],
)
def test_client_disconnect_is_detected(dev, path, body, unfinished):
    body = {"model": "slow", "messages": messages("tick tock"), **body}
    resp = send(dev, path, body, stream=True)
    assert unfinished(next(resp.iter_lines()))
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
        (CHAT, b"{not json"),
        (CHAT, b"[1]"),
        (CHAT, b""),
        (CHAT, b'{"messages": []}'),
        (CHAT, b'{"model": "echo", "messages": 3}'),
        (CHAT, b'{"model": "echo", "dev_repeat": "x"}'),
        (CHAT, b'{"model": "echo", "dev_token_delay": true}'),
        (CHAT, b'{"model": "echo", "temperature": "hot"}'),
        (CHAT, b'{"model": "echo", "top_k": 1.5}'),
        (CHAT, b'{"model": "echo", "stop": [1]}'),
        (CHAT, b'{"model": "echo", "max_tokens": 0}'),
        (CHAT, b'{"model": "echo", "stream_options": {"include_usage": "yes"}}'),
        (CHAT, b'{"model": "thinker", "chat_template_kwargs": {"enable_thinking": "no"}}'),
        (
            CHAT,
            b'{"model": "tooler", "messages": [{"role": "assistant", "tool_calls":'
            b' [{"id": "c", "function": {"name": "f", "arguments": {}}}]}]}',
        ),
        ("/v1/completions", b'{"model": "echo", "prompt": 1}'),
        ("/v1/completions", b'{"model": "echo", "prompt": "a", "suffix": "b"}'),
    ],
)
def test_bad_requests_get_400(dev, path, data):
    resp = requests.post(dev.url + path, data=data, timeout=5)
    assert resp.status_code == 400 and isinstance(error_of(resp), str)


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
    for bad in (
        {"nonsense": 1},
        {"linger": -1},
        {"linger": "x"},
        {"skip_done": 1},
        {"skip_sentinel": "yes"},
        {"repeat_ids": 1},
        {"reasoning_field": "thoughts"},
        {"finish_reason": 3},
    ):
        assert send(dev, "/dev/misbehave", bad).status_code == 400
    send(dev, "/dev/reset", {})
    assert chat(dev, "echo", messages("x"))[-1]["done"] is True


@pytest.mark.parametrize(
    ("status", "path", "answer"),
    [
        (500, "/api/chat", {"error": "disk on fire"}),
        (500, CHAT, {"error": {"message": "disk on fire", "type": "internal_error", "code": 500}}),
        (
            503,
            "/v1/completions",
            {"error": {"message": "disk on fire", "type": "internal_error", "code": 503}},
        ),
        (
            429,
            "/v1/models",
            {"error": {"message": "disk on fire", "type": "rate_limit_error", "code": 429}},
        ),
    ],
)
def test_fail_injection_with_an_error_text(dev, status, path, answer):
    send(dev, "/dev/fail", {"status": status, "count": 1, "error": "disk on fire"})
    body = {"model": "echo", "messages": messages("x"), "prompt": "x"}
    method = "GET" if path == "/v1/models" else "POST"
    resp = requests.request(method, dev.url + path, json=body, timeout=5)
    assert (resp.status_code, resp.json()) == (status, answer)
    assert requests.request(method, dev.url + path, json=body, timeout=5).status_code == 200


# --- OpenAI mode: /v1 --------------------------------------------------------------------------


def test_openai_models_lists_the_bare_names(dev):
    data = requests.get(dev.url + "/v1/models", timeout=5).json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [
        "echo",
        "coder",
        "tooler",
        "slow",
        "broken",
        "thinker",
    ]
    for model in data["data"]:
        assert model["object"] == "model" and model["owned_by"] == "chatsite-dev"
        assert isinstance(model["created"], int)


@pytest.mark.parametrize("name", ["nope", "echo:latest", ""])
def test_openai_unknown_models(dev, name):
    resp = send(dev, CHAT, {"model": name, "messages": messages("hi"), "stream": True})
    assert resp.status_code == (404 if name else 400)
    assert error_of(resp) == (
        f"The model `{name}` does not exist." if name else "model is required"
    )


def test_openai_chat_streams_chunks_usage_and_done(dev):
    conversation = [{"role": "system", "content": "be brief"}, *messages("a", "ok", "hello  big")]
    events = openai_chat(dev, "echo", conversation, stream_options={"include_usage": True})
    *chunks, usage, done = events
    assert done == "[DONE]"
    assert len({e["id"] for e in events[:-1]}) == 1 and events[0]["id"].startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "echo"
        assert isinstance(chunk["created"], int) and len(chunk["choices"]) == 1
    assert deltas(chunks)[0]["role"] == "assistant"
    pieces = [d["content"] for d in deltas(chunks)[1:-1]]
    assert pieces == ["[be ", "brief] ", "You ", "said: ", "hello  ", "big"]
    assert deltas(chunks)[-1] == {}
    assert finish_reasons(chunks) == [None] * (len(chunks) - 1) + ["stop"]
    assert usage["choices"] == [] and usage["id"] == chunks[0]["id"]
    assert usage["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}
    # without include_usage: no usage chunk
    events = openai_chat(dev, "echo", messages("hi"))
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
    assert openai_text(events) == "You said: hi"


def test_openai_dev_knobs_and_max_tokens(dev):
    events = openai_chat(dev, "echo", messages("ab"), dev_repeat=3, temperature=0.2, seed=1)
    assert openai_text(events) == "You said: ab" * 3
    events = openai_chat(dev, "echo", messages("a b c"), max_tokens=2, top_k=4, min_p=0.1)
    assert openai_text(events) == "You said: "
    assert finish_reasons(events)[-1] == "length"
    events = openai_chat(dev, "echo", messages("a"), max_tokens=3, stop=["x"], repeat_penalty=1)
    assert openai_text(events) == "You said: a" and finish_reasons(events)[-1] == "stop"


def test_openai_stream_false_returns_one_object(dev):
    body = {"model": "thinker", "messages": messages("hi"), "max_tokens": 100}
    data = send(dev, CHAT, body).json()
    assert data["object"] == "chat.completion" and data["model"] == "thinker"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "You said: hi",
                "reasoning_content": "The user wrote 'hi'; I will echo it. ",
            },
            "finish_reason": "stop",
        }
    ]
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 11


@pytest.mark.parametrize("field", [None, "reasoning_content", "reasoning", "thinking"])
def test_openai_thinker_reasons_in_the_field_it_is_told(dev, field):
    if field:
        dev.misbehave(reasoning_field=field)
    events = openai_chat(dev, "thinker", messages("hm"))
    name = field or "reasoning_content"
    thoughts = [d.get(name, "") for d in deltas(events)]
    assert "".join(thoughts) == "The user wrote 'hm'; I will echo it. "
    first_text = next(i for i, d in enumerate(deltas(events)) if d.get("content"))
    assert all(not t for t in thoughts[first_text:])
    assert openai_text(events) == "You said: hm"
    other_fields = {"reasoning_content", "reasoning", "thinking"} - {name}
    assert not any(other_fields & set(d) for d in deltas(events))
    # the thinking switch of vLLM and SGLang
    events = openai_chat(
        dev, "thinker", messages("hm"), chat_template_kwargs={"enable_thinking": False}
    )
    assert not any(name in d for d in deltas(events)) and openai_text(events) == "You said: hm"


def tool_fragments(events):
    return [f for d in deltas(events) for f in d.get("tool_calls", [])]


def test_openai_tool_calls_stream_as_argument_fragments(dev):
    text = 'say "checking" call get_weather {"city": "Zürich \\"Z\\""} and call now'
    events = openai_chat(dev, "tooler", messages(text), tools=TOOLS)
    assert openai_text(events) == "checking"
    assert finish_reasons(events)[-1] == "tool_calls" and events[-1] == "[DONE]"
    fragments = tool_fragments(events)
    weather = [f for f in fragments if f["index"] == 0]
    arguments = json.dumps({"city": 'Zürich "Z"'})  # \u00fc and \" escapes: split mid-escape
    assert [f["function"]["arguments"] for f in weather] == [
        arguments[at : at + 3] for at in range(0, len(arguments), 3)
    ]
    first, *rest = weather
    assert first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    assert all(
        set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in rest
    )
    now = [f for f in fragments if f["index"] == 1]
    assert len(now) == 1 and now[0]["function"] == {"name": "now", "arguments": "{}"}
    assert now[0]["id"] != first["id"]


def test_openai_tooler_answers_by_tool_call_id(dev):
    conversation = [
        *messages("call a and call b"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "2"},
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        {"role": "tool", "tool_call_id": "call_9", "content": "?"},
    ]
    events = openai_chat(dev, "tooler", conversation, tools=TOOLS)
    assert openai_text(events) == "Tool b said: 2; Tool a said: 1; Tool ? said: ?"
    assert finish_reasons(events)[-1] == "stop"
    # a model without tools ignores them, as OpenAI-compatible servers do
    assert (
        openai_text(openai_chat(dev, "echo", messages("call x"), tools=TOOLS)) == "You said: call x"
    )


def test_openai_tool_call_misbehaviour(dev):
    text = 'call f {"q": "abcdefgh"} call g {"n": 1}'
    dev.misbehave(repeat_ids=True, same_index=True)
    fragments = tool_fragments(openai_chat(dev, "tooler", messages(text), tools=TOOLS))
    assert len(fragments) > 2 and {f["index"] for f in fragments} == {0}
    assert all(f["type"] == "function" and f["id"].startswith("call_") for f in fragments)
    by_id = {}
    for fragment in fragments:
        by_id.setdefault(fragment["id"], []).append(fragment["function"])
    assert [{f["name"] for f in parts} for parts in by_id.values()] == [{"f"}, {"g"}]
    assert ["".join(f["arguments"] for f in parts) for parts in by_id.values()] == [
        '{"q": "abcdefgh"}',
        '{"n": 1}',
    ]
    dev.misbehave(bad_arguments=True)
    fragments = tool_fragments(openai_chat(dev, "tooler", messages(text), tools=TOOLS))
    for index in (0, 1):
        arguments = "".join(f["function"]["arguments"] for f in fragments if f["index"] == index)
        with pytest.raises(json.JSONDecodeError):
            json.loads(arguments)


@pytest.mark.parametrize(
    ("how", "finish", "ending"),
    [
        ({"skip_done": True}, [], "no [DONE]"),
        ({"skip_sentinel": True}, ["stop"], "no [DONE]"),
        ({"finish_reason": "abort"}, ["abort"], "[DONE]"),
    ],
)
def test_openai_stream_endings(dev, how, finish, ending):
    dev.misbehave(**how)
    events = openai_chat(dev, "echo", messages("x"), stream_options={"include_usage": True})
    assert openai_text(events) == "You said: x"
    assert [r for r in finish_reasons(events) if r] == finish
    assert (events[-1] == "[DONE]") == (ending == "[DONE]")
    assert any("usage" in e for e in events if isinstance(e, dict)) == bool(finish)


def test_openai_broken_sends_an_error_event_and_closes(dev):
    dev.misbehave(error="out of memory")
    body = json.dumps({"model": "broken", "messages": messages("x"), "stream": True}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(dev.server.server_address[:2], timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # ends only when the server closes the connection
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Content-Type: text/event-stream" in head and body.endswith(b"0\r\n\r\n")
    events = [e.removeprefix(b"data: ") for e in body.split(b"\r\n") if e.startswith(b"data: ")]
    *pieces, error = [json.loads(e) for e in events]
    assert openai_text(pieces) == "You said: x" and all(r is None for r in finish_reasons(pieces))
    assert error == {"error": {"message": "out of memory", "type": "internal_error", "code": 500}}


def test_openai_completions_and_fill_in_the_middle(dev):
    prompt, suffix = "def add(a, b):\n    return", "\n\nprint(add(1, 2))"
    events = stream_events(
        dev,
        "/v1/completions",
        {"model": "coder", "prompt": prompt, "suffix": suffix},
    )
    assert events[-1] == "[DONE]" and events[0]["id"].startswith("cmpl-")
    assert all(e["object"] == "text_completion" and e["model"] == "coder" for e in events[:-1])
    expected = f"<fill between {prompt[-20:]!r} and {suffix[:20]!r}>"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected
    assert [e["choices"][0]["finish_reason"] for e in events[-2:-1]] == ["stop"]
    body = {"model": "echo", "prompt": "a b c", "max_tokens": 2}
    events = stream_events(
        dev,
        "/v1/completions",
        body,
    )
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["a ", "b ", ""]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    resp = send(dev, "/v1/completions", {"model": "echo", "prompt": "a", "suffix": "b"})
    assert resp.status_code == 400 and error_of(resp) == "model `echo` does not support suffix"


def test_openai_calls_are_recorded_and_load_models(dev):
    body = {"model": "coder", "prompt": "x", "stream": True}
    stream_events(dev, "/v1/completions", body)
    requests.get(dev.url + "/v1/models", timeout=5)
    assert dev.requests() == [
        {"path": "/v1/completions", "body": body},
        {"path": "/v1/models", "body": None},
    ]
    assert dev.loaded() == ["coder:latest"]
    assert wait_until(lambda: dev.stats()["completed_streams"] == 1)
    resp = requests.get(dev.url + "/v1/nothing", timeout=5)
    assert resp.status_code == 404 and error_of(resp) == "not found"


def test_openai_api_key():
    with DevInstance(api_key="sk-dev") as keyed:
        url, body = keyed.openai_url, {"model": "echo", "messages": messages("hi")}
        for headers in ({}, {"Authorization": "Bearer sk-other"}, {"Authorization": "sk-dev"}):
            resp = requests.post(url + "/chat/completions", json=body, headers=headers, timeout=5)
            assert resp.status_code == 401
            assert resp.json() == {
                "error": {
                    "message": "Incorrect API key provided",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        assert requests.get(url + "/models", timeout=5).status_code == 401
        good = {"Authorization": "Bearer sk-dev"}
        resp = requests.post(url + "/chat/completions", json=body, headers=good, timeout=5)
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"] == "You said: hi"
        assert requests.get(url + "/models", headers=good, timeout=5).status_code == 200
        # the Ollama side ignores the key
        assert requests.get(keyed.url + "/api/tags", timeout=5).status_code == 200
