"""Chat instances that misbehave, over real HTTP: nonsense answers, error texts that must not
reach clients, answers without their done line, and bodies that stay open after it."""

import logging

import pytest
import requests

from chatsite.dev.instance import MODELS, DevInstance
from tests.helpers import (
    chat_body,
    create_chat,
    get_chat,
    instance_entry,
    site_of,
    stream,
    user_is_free,
)
from tests.servers import wait_until

KNOWN_CAPABILITIES = {"completion", "tools", "insert", "vision", "thinking", "embedding"}
LEAK = "open /usr/share/ollama/.ollama/models/blobs/sha256-1f: permission denied (CUDA0 1.2 GiB)"
ECHOED = {"status": "ok", "msg": "", "fullMsg": "You said: hello there", "done": True}
SOURCE_LINE = "\n  at llama.cpp/src/llama.cpp:1234"


@pytest.fixture
def rogue():
    """A second dev instance, to misbehave while the session's one stays healthy."""
    with DevInstance().start() as instance:
        yield instance


NONSENSE = {
    "tags is a list": {"tags": [1, 2, 3]},
    "tags is a string": {"tags": "models"},
    "models are numbers": {"tags": {"models": [1, 2]}},
    "a name is a number": {"tags": {"models": [{"name": 5}]}},
    "details is a list": {"tags": {"models": [{"name": "echo", "details": [1]}]}},
    "size is a string": {"tags": {"models": [{"name": "echo", "size": "big"}]}},
    "capabilities is a string": {"show": {"capabilities": "completion"}},
    "show is a list": {"show": [1]},
}


@pytest.mark.parametrize("how", NONSENSE.values(), ids=NONSENSE.keys())
def test_an_instance_answering_nonsense_is_left_out(make_live, token_for, upstream, rogue, how):
    rogue.misbehave(**how)
    live = make_live(CHAT_INSTANCES=[rogue.url, upstream.url])
    response = requests.post(f"{live.url}/models", json={"token": token_for()})
    assert response.status_code == 200
    models = response.json()["models"]
    assert sorted(m["name"] for m in models) == sorted(MODELS)  # the healthy one's, as it says
    for model in models:
        assert set(model["capabilities"]) <= KNOWN_CAPABILITIES
        assert isinstance(model["size"], int)
        assert all(isinstance(model[key], str) for key in ("family", "modified_at"))

    health = requests.get(f"{live.url}/healthz")
    assert health.status_code == 200
    assert [i["reachable"] for i in health.json()["instances"]] == [False, True]

    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="echo"))
    assert lines[-1] == ECHOED
    assert not [r for r in rogue.requests() if r["path"] == "/api/chat"]


def test_unknown_capabilities_are_left_out(make_live, token_for, rogue):
    rogue.misbehave(show={"capabilities": ["completion", "telepathy", "tools"]})
    live = make_live(CHAT_INSTANCES=[rogue.url])
    models = requests.post(f"{live.url}/models", json={"token": token_for()}).json()["models"]
    assert {m["name"] for m in models} == set(MODELS)
    assert all(m["capabilities"] == ["completion", "tools"] for m in models)


def leaked(text: str) -> bool:
    return "/usr/share" in text or "CUDA" in text or "llama.cpp" in text


def test_instance_error_text_goes_to_the_log_not_the_client(make_live, token_for, upstream, caplog):
    caplog.set_level(logging.WARNING)
    live = make_live(MODELS_CACHE_SECONDS=60, INSTANCE_COOLDOWN=0)
    token = token_for()
    assert requests.post(f"{live.url}/models", json={"token": token}).ok  # catalog warmed
    for status, code, reason in [
        (500, 500, "chat server error"),
        (400, 400, "chat server refused the request"),
        (404, 400, "model not found"),
    ]:
        upstream.fail_next(status, 10, LEAK + SOURCE_LINE)
        response = requests.post(f"{live.url}/chat", json=chat_body(token, model="echo"))
        assert (response.status_code, response.json()) == (
            code,
            {"status": "error", "msg": reason},
        )
        upstream.reset()

    upstream.misbehave(error=LEAK + SOURCE_LINE)  # what `broken` says when it crashes
    for path, body in [
        ("/chat", chat_body(token, model="broken")),
        ("/generate", {"token": token, "model": "broken", "prompt": "x"}),
    ]:
        response, lines = stream(live.url, path, body)
        assert response.status_code == 200
        assert lines[-1] == {"status": "error", "msg": "chat server error", "done": True}
        assert not any(leaked(str(line)) for line in lines)

    logged = [record.getMessage() for record in caplog.records if LEAK in record.getMessage()]
    assert len(logged) >= 4  # each failure is in the log, with the instance's words
    assert all("\n" not in message and "\\n  at llama.cpp" in message for message in logged)


def test_an_answer_without_its_done_line_is_a_failure(kind_live, token_for, upstream):
    """Ollama's without its `done` line; the OpenAI API's without a `finish_reason`."""
    live = kind_live
    upstream.misbehave(skip_done=True)
    token = token_for()
    chat_id = create_chat(live.url, token)
    _, lines = stream(live.url, "/chat", chat_body(token, model="echo", chatfile=chat_id))
    assert "".join(line["msg"] for line in lines[:-1]) == "You said: hello there"
    assert lines[-1] == {
        "status": "error",
        "msg": "chat server ended the answer early",
        "done": True,
    }
    saved = get_chat(live.url, token, chat_id)[-1]
    assert saved["content"] == "You said: hello there" and saved["incomplete"] is True

    body = {"token": token, "model": "echo", "prompt": "x"}
    _, lines = stream(live.url, "/generate", body)
    assert lines[-1]["status"] == "error" and lines[-1]["done"] is True


def test_an_answer_is_complete_at_its_done_line(make_live, token_for, upstream, user, kind):
    """A quiet instance that keeps the body open after `done` (or after the finish_reason,
    the usage and `[DONE]`) delays nothing."""
    live = make_live(CHAT_INSTANCES=[instance_entry(upstream, kind)], UPSTREAM_READ_TIMEOUT=3)
    upstream.misbehave(linger=60)
    token = token_for(user)
    chat_id = create_chat(live.url, token)
    body = chat_body(token, model="echo", chatfile=chat_id)
    _, lines = stream(live.url, "/chat", body, timeout=10)
    assert lines[-1] == ECHOED
    saved = get_chat(live.url, token, chat_id)[-1]
    assert saved["content"] == "You said: hello there" and "incomplete" not in saved
    assert user_is_free(site_of(live.app).coordinator, user)
    # the connection is not kept waiting for the rest: it is closed
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1)


def test_a_finished_answer_that_ends_properly_is_not_cut(kind_live, token_for, upstream):
    for _ in range(3):
        _, lines = stream(kind_live.url, "/chat", chat_body(token_for(), model="echo"))
        assert lines[-1]["done"] is True
    assert wait_until(lambda: upstream.stats()["completed_streams"] == 3)
    assert upstream.stats()["disconnected_streams"] == 0
