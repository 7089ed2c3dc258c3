"""/chat and /generate over real HTTP against the development chat instance."""

import os
import threading

import pytest
import requests

from chatsite.dev.instance import DevInstance
from chatsite.dev.ports import free_port
from tests.helpers import (
    NO_INSTANCE,
    Stream,
    chat_body,
    create_chat,
    get_chat,
    instance_entry,
    ndjson,
    new_user,
    site_of,
    slow_body,
    stream,
    upstream_bodies,
    user_is_free,
)
from tests.servers import wait_until


def test_chat_stream_shape(kind_live, token_for):
    response, lines = stream(kind_live.url, "/chat", chat_body(token_for(), model="echo"))
    assert response.status_code == 200
    assert response.headers["X-Accel-Buffering"] == "no"
    *pieces, last = lines
    assert pieces and all(p["status"] == "ok" and p["done"] is False for p in pieces)
    assert last == {"status": "ok", "msg": "", "fullMsg": "You said: hello there", "done": True}
    assert "".join(p["msg"] for p in pieces) == last["fullMsg"]


def test_generate_stream_shape(kind_live, token_for):
    body = {"token": token_for(), "model": "echo", "prompt": "Once upon a time"}
    response, lines = stream(kind_live.url, "/generate", body)
    assert response.status_code == 200
    *pieces, last = lines
    assert all(set(p) == {"status", "response"} for p in pieces)
    assert last == {"status": "ok", "response": "", "finalMsg": "Once upon a time"}
    assert "".join(p["response"] for p in pieces) == last["finalMsg"]


def test_fill_in_the_middle(kind_live, token_for):
    body = {"token": token_for(), "model": "coder", "prompt": "def f(x):", "suffix": "return y"}
    _, lines = stream(kind_live.url, "/generate", body)
    assert lines[-1]["finalMsg"] == "<fill between 'def f(x):' and 'return y'>"
    body["model"] = "echo"
    response, _ = stream(kind_live.url, "/generate", body)
    assert response.status_code == 400
    assert "suffix" in response.json()["msg"]


def test_defaults_come_from_settings(live, token_for, upstream):
    token = token_for()
    prefs = {"site_prefs": {"model": "echo"}, "prompt_data": {"system": "Be kind."}}
    assert requests.post(f"{live.url}/update-settings", json={"token": token, "prefs": prefs}).ok
    _, lines = stream(live.url, "/chat", chat_body(token, options={"seed": 7, "temperature": 0}))
    assert lines[-1]["fullMsg"] == "[Be kind.] You said: hello there"
    assert upstream.requests()[-1]["path"] == "/api/chat"
    sent = upstream_bodies(upstream)[-1]
    assert sent["model"] == "echo:latest"
    assert sent["messages"][0] == {"role": "system", "content": "Be kind."}
    assert sent["options"] == {"seed": 7, "temperature": 0, "num_predict": 4096}
    # The request's own system prompt wins over the saved one.
    _, lines = stream(live.url, "/chat", chat_body(token, system="Be terse."))
    assert lines[-1]["fullMsg"].startswith("[Be terse.]")
    _, lines = stream(live.url, "/generate", {"token": token, "prompt": "abc"})
    assert lines[-1]["finalMsg"] == "abc"


def test_timestamps_are_not_sent_upstream(live, token_for, upstream):
    body = chat_body(token_for(), model="echo")
    body["messages"][0]["timestamp"] = "2026-01-01T00:00:00Z"
    stream(live.url, "/chat", body)
    assert upstream_bodies(upstream)[-1]["messages"] == [{"role": "user", "content": "hello there"}]


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"messages": []}, 400, "messages"),
        ({"messages": None}, 400, "messages"),
        ({"messages": "DROP"}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
        ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, 400, "messages.0.extra"),
        ({"messages": "hi"}, 400, "messages"),
        ({"model": "nope"}, 400, "model"),
        ({"model": 5}, 400, "model"),
        ({"options": "fast"}, 400, "options"),
        ({"chatfile": "../../x"}, 400, "chatfile"),
    ],
)
def test_chat_validation(live, token_for, body, status, field):
    full = chat_body(token_for(), "x", model="echo")
    full.update(body)
    if full["messages"] == "DROP":
        del full["messages"]
    response = requests.post(f"{live.url}/chat", json=full)
    assert response.status_code == status
    assert field in response.json()["msg"]


def test_message_count_and_size_limits(make_live, token_for):
    live = make_live(MAX_MESSAGES=3, MAX_MESSAGE_CHARS=10)
    messages = [{"role": "user", "content": "x"}] * 4
    response = requests.post(
        f"{live.url}/chat", json={"token": token_for(), "model": "echo", "messages": messages}
    )
    assert response.status_code == 400
    response = requests.post(
        f"{live.url}/chat", json=chat_body(token_for(), "x" * 11, model="echo")
    )
    assert response.status_code == 400
    assert "messages.0.content" in response.json()["msg"]


def test_missing_model_and_prompt(live, token_for):
    response = requests.post(f"{live.url}/chat", json=chat_body(token_for()))
    assert response.status_code == 400
    assert "model" in response.json()["msg"]
    response = requests.post(f"{live.url}/generate", json={"token": token_for(), "model": "echo"})
    assert response.status_code == 400
    assert "prompt" in response.json()["msg"]


def test_bad_token_is_401_before_anything(live):
    response = requests.post(f"{live.url}/chat", json={"token": "x", "messages": "nonsense"})
    assert response.status_code == 401


def test_first_line_arrives_while_upstream_still_generating(live, token_for, upstream):
    opened = Stream(live.url, slow_body(token_for(), delay=0.02, repeat=10))
    assert upstream.stats()["active_streams"] == 1  # the rest is still being generated
    rest = list(opened.lines)
    assert rest[-1]["done"] is True
    opened.close()


def test_second_request_of_same_user_is_429_other_users_proceed(live, token_for):
    token = token_for()
    opened = Stream(live.url, slow_body(token))
    busy = requests.post(f"{live.url}/chat", json=chat_body(token, model="echo"))
    assert busy.status_code == 429
    assert busy.headers["Retry-After"].isdigit()
    assert busy.json()["status"] == "error"
    busy = requests.post(
        f"{live.url}/generate", json={"token": token, "model": "echo", "prompt": "x"}
    )
    assert busy.status_code == 429
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="echo"))
    assert lines[-1]["done"] is True
    opened.close()
    # once the stream is gone the user may ask again
    ok = wait_until(
        lambda: (
            requests.post(f"{live.url}/chat", json=chat_body(token, model="echo")).status_code
            == 200
        )
    )
    assert ok


def test_504_when_no_slot_frees_up(make_live, token_for, upstream):
    live = make_live(
        CHAT_INSTANCES=[{"url": upstream.url, "max_concurrent": 1}], INSTANCE_WAIT_TIMEOUT=0.5
    )
    holder = Stream(live.url, slow_body(token_for()))
    response = requests.post(f"{live.url}/chat", json=chat_body(token_for(), model="echo"))
    assert response.status_code == 504
    assert response.json() == NO_INSTANCE
    holder.close()


def test_waiting_request_gets_the_slot_when_it_frees(make_live, token_for, upstream):
    live = make_live(
        CHAT_INSTANCES=[{"url": upstream.url, "max_concurrent": 1}], INSTANCE_WAIT_TIMEOUT=5
    )
    holder = Stream(live.url, slow_body(token_for()))
    result = {}

    def waiter():
        result["lines"] = stream(live.url, "/chat", chat_body(token_for(), model="echo"))[1]

    thread = threading.Thread(target=waiter)
    thread.start()
    holder.close()
    thread.join(10)
    assert result["lines"][-1]["done"] is True


def test_down_instance_is_skipped(make_live, token_for, upstream):
    dead = f"http://127.0.0.1:{free_port()}"
    live = make_live(CHAT_INSTANCES=[dead, upstream.url])
    _, lines = stream(live.url, "/chat", chat_body(token_for(), model="echo"))
    assert lines[-1]["done"] is True
    names = [
        m["name"]
        for m in requests.post(f"{live.url}/models", json={"token": token_for()}).json()["models"]
    ]
    assert "echo:latest" in names


@pytest.mark.parametrize("status", [503, 429])
def test_failing_instance_is_cooled_down_and_another_used(make_live, token_for, kind, status):
    with DevInstance().start() as first, DevInstance().start() as second:
        instances = [instance_entry(first, kind), instance_entry(second, kind)]
        live = make_live(CHAT_INSTANCES=instances, MODELS_CACHE_SECONDS=60)
        token = token_for()
        assert requests.post(f"{live.url}/models", json={"token": token}).ok  # warm the catalog
        first.fail_next(status, 100)
        # if the failing one is tried first, the other serves; then it rests
        for _ in range(3):
            _, lines = stream(live.url, "/chat", chat_body(token_for(), model="echo"))
            assert lines[-1]["done"] is True
        served_by_first = upstream_bodies(first, kind)
        assert len(served_by_first) <= 1  # cooled down after its first failure


def test_all_instances_down_is_504(make_live, token_for):
    live = make_live(CHAT_INSTANCES=[f"http://127.0.0.1:{free_port()}"])
    response = requests.post(f"{live.url}/chat", json=chat_body(token_for(), model="echo"))
    assert response.status_code == 504
    models = requests.post(f"{live.url}/models", json={"token": token_for()})
    assert models.status_code == 200
    assert models.json() == {"status": "ok", "models": []}


def test_upstream_error_before_stream_is_500(make_live, token_for, upstream, kind):
    live = make_live(CHAT_INSTANCES=[instance_entry(upstream, kind)], MODELS_CACHE_SECONDS=60)
    token = token_for()
    requests.post(f"{live.url}/models", json={"token": token})
    upstream.fail_next(500, 10)
    response = requests.post(f"{live.url}/chat", json=chat_body(token, model="echo"))
    assert response.status_code == 500
    assert response.json()["status"] == "error"
    assert wait_until(lambda: requests.post(f"{live.url}/settings", json={"token": token}).ok)


def test_mid_stream_error_is_the_last_line(kind_live, token_for):
    token = token_for()
    response, lines = stream(kind_live.url, "/chat", chat_body(token, model="broken"))
    assert response.status_code == 200
    assert len(lines) == 4
    assert lines[-1]["status"] == "error" and lines[-1]["done"] is True
    assert lines[-1]["msg"] == "chat server error"  # the instance's words go to the log
    # the user is free again at once
    _, lines = stream(kind_live.url, "/chat", chat_body(token, model="echo"))
    assert lines[-1]["done"] is True


def test_client_disconnect_closes_upstream_and_frees_user(kind_live, token_for, upstream, user):
    token = token_for(user)
    Stream(kind_live.url, slow_body(token)).close()
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1)
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)
    assert wait_until(lambda: user_is_free(site_of(kind_live.app).coordinator, user))
    _, lines = stream(kind_live.url, "/chat", chat_body(token, model="echo"))
    assert lines[-1]["done"] is True


def test_chat_file_saved_and_renamed(kind_live, token_for):
    token = token_for()
    chat_id = create_chat(kind_live.url, token)
    body = chat_body(
        token, "What is the weather like on Mars today?", model="echo", chatfile=chat_id
    )
    body["messages"][0]["timestamp"] = "2026-01-01T00:00:00.000Z"
    _, lines = stream(kind_live.url, "/chat", body)
    contents = get_chat(kind_live.url, token, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant"]
    assert contents[0]["timestamp"] == "2026-01-01T00:00:00.000Z"
    assert contents[1]["content"] == lines[-1]["fullMsg"]
    assert contents[1]["timestamp"].endswith("Z")
    assert "incomplete" not in contents[1]
    files = requests.post(f"{kind_live.url}/settings", json={"token": token}).json()["chat_files"][
        "files"
    ]
    assert files == [{"id": chat_id, "name": "What is the weather like on Mars today?"}]
    # the saved history can be sent back as it is
    history = [*contents, {"role": "user", "content": "And tomorrow?"}]
    body = {"token": token, "model": "echo", "messages": history, "chatfile": chat_id}
    _, lines = stream(kind_live.url, "/chat", body)
    contents = get_chat(kind_live.url, token, chat_id)
    assert len(contents) == 4 and contents[3]["content"] == "You said: And tomorrow?"
    files = requests.post(f"{kind_live.url}/settings", json={"token": token}).json()["chat_files"][
        "files"
    ]
    assert files[0]["name"] == "What is the weather like on Mars today?"  # renamed only once


def test_another_users_chatfile_is_404_before_streaming(live, token_for, upstream):
    chat_id = create_chat(live.url, token_for())
    response = requests.post(
        f"{live.url}/chat", json=chat_body(token_for(), model="echo", chatfile=chat_id)
    )
    assert response.status_code == 404
    assert response.json() == {"status": "error", "msg": "chat not found"}
    assert upstream.stats()["requests"] == 0


def test_partial_reply_saved_as_incomplete_on_upstream_error(kind_live, token_for):
    token = token_for()
    chat_id = create_chat(kind_live.url, token)
    stream(kind_live.url, "/chat", chat_body(token, "boom", model="broken", chatfile=chat_id))
    contents = get_chat(kind_live.url, token, chat_id)
    assert contents[-1]["incomplete"] is True
    assert contents[-1]["content"].startswith("You said:")


def test_a_reply_with_a_chatfile_outlives_its_client(kind_live, token_for, upstream, user):
    """The client goes after its first line; the answer goes on and is saved complete."""
    token = token_for(user)
    chat_id = create_chat(kind_live.url, token)
    Stream(kind_live.url, slow_body(token, delay=0.01, repeat=25, chatfile=chat_id)).close()
    assert wait_until(lambda: user_is_free(site_of(kind_live.app).coordinator, user))
    contents = get_chat(kind_live.url, token, chat_id)
    assert contents[-1]["role"] == "assistant"
    assert "incomplete" not in contents[-1] and "generating" not in contents[-1]
    assert contents[-1]["content"] == "You said: hello there" * 25
    assert upstream.stats()["completed_streams"] == 1
    assert upstream.stats()["disconnected_streams"] == 0


def test_models_lists_union_once_with_capabilities(make_live, token_for, upstream):
    with DevInstance().start() as other:
        live = make_live(CHAT_INSTANCES=[other.url, upstream.url])
        response = requests.post(f"{live.url}/models", json={"token": token_for()})
    models = response.json()["models"]
    names = [m["name"] for m in models]
    assert len(names) == len(set(names))
    coder = next(m for m in models if m["name"] == "coder:latest")
    assert set(coder) == {
        "name",
        "family",
        "parameter_size",
        "quantization_level",
        "size",
        "modified_at",
        "capabilities",
    }
    assert "insert" in coder["capabilities"]
    assert "tools" in next(m for m in models if m["name"] == "tooler:latest")["capabilities"]


def test_models_are_cached(make_live, token_for, upstream):
    live = make_live(MODELS_CACHE_SECONDS=60)
    token = token_for()
    for _ in range(3):
        assert requests.post(f"{live.url}/models", json={"token": token}).ok
    assert len(upstream_bodies(upstream, "/api/tags")) == 1


def test_preferred_model_must_be_offered(live, token_for):
    token = token_for()
    bad = {"token": token, "prefs": {"site_prefs": {"model": "no-such-model"}}}
    response = requests.post(f"{live.url}/update-settings", json=bad)
    assert response.status_code == 400
    assert "prefs.site_prefs.model" in response.json()["msg"]
    good = {"token": token, "prefs": {"site_prefs": {"model": "coder"}}}
    response = requests.post(f"{live.url}/update-settings", json=good)
    assert response.json()["userprefs"]["site_prefs"]["model"] == "coder:latest"


def test_nothing_leaks_after_many_streams(live, token_for, upstream):
    coordinator = site_of(live.app).coordinator
    fds_before = len(os.listdir("/proc/self/fd"))
    users = [new_user() for _ in range(8)]
    tokens = [token_for(u) for u in users]
    errors = []

    def post_when_free(token, model):
        """A client that just hung up may still hold its lock for a moment: 429, retry."""

        def attempt():
            body = chat_body(token, model=model)
            response = requests.post(f"{live.url}/chat", json=body, stream=True, timeout=10)
            if response.status_code != 429:
                return [response]  # a list: a Response itself is falsy unless ok
            response.close()
            return None

        answered = wait_until(attempt, timeout=10)
        assert answered, "user stayed locked"
        return answered[0]

    def run(token, count):
        try:
            for index in range(count):
                response = post_when_free(token, "broken" if index % 10 == 0 else "echo")
                assert response.status_code == 200, response.text
                if index % 7 == 0:
                    response.close()  # a client that goes away early
                    continue
                lines = list(ndjson(response.iter_lines()))
                assert lines[-1]["done"] is True, lines
        except Exception as error:  # collected and asserted on below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(t, 25)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert wait_until(lambda: all(user_is_free(coordinator, u) for u in users))
    assert coordinator.slots_in_use(upstream.url) == 0
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)
    assert len(os.listdir("/proc/self/fd")) < fds_before + 40


def test_upstream_read_timeout_ends_the_stream_in_band(make_live, token_for, user):
    live = make_live(UPSTREAM_READ_TIMEOUT=0.3)
    body = chat_body(token_for(user), model="slow", options={"dev_token_delay": 2})
    response, lines = stream(live.url, "/chat", body)
    assert response.status_code == 200
    assert lines[-1]["status"] == "error" and lines[-1]["done"] is True
    assert wait_until(lambda: user_is_free(site_of(live.app).coordinator, user))


def test_a_stream_closed_before_it_started_still_cleans_up(make_app, upstream, token_for, user):
    """The WSGI server may close the body without ever iterating it (client gone at once)."""
    app = make_app(CHAT_INSTANCES=[{"url": upstream.url, "max_concurrent": 1}])
    client = app.test_client()
    body = chat_body(token_for(user), model="slow", options={"dev_repeat": 50})
    response = client.post("/chat", json=body, buffered=False)
    assert response.status_code == 200
    response.close()  # never iterated
    coordinator = site_of(app).coordinator
    assert user_is_free(coordinator, user)  # the user's lock was released
    assert coordinator.slots_in_use(upstream.url) == 0
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)


def test_model_gone_from_every_instance_is_400(make_live, token_for, upstream):
    """The catalog still lists the model, but the instance no longer has it."""
    live = make_live(MODELS_CACHE_SECONDS=60)
    token = token_for()
    assert requests.post(f"{live.url}/models", json={"token": token}).ok
    upstream.fail_next(404, 1)
    response = requests.post(f"{live.url}/chat", json=chat_body(token, model="echo"))
    assert response.status_code == 400
    assert response.json()["status"] == "error"


def test_a_reply_that_cannot_be_saved_ends_with_an_error_line(live, token_for, monkeypatch):
    token = token_for()
    chat_id = create_chat(live.url, token)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("chatsite.storage.saves.save_chat", broken_save)
    _, lines = stream(live.url, "/chat", chat_body(token, model="echo", chatfile=chat_id))
    assert lines[-1] == {
        "status": "error",
        "msg": "the reply could not be saved to the chat",
        "done": True,
    }
    assert requests.post(f"{live.url}/chat", json=chat_body(token, model="echo")).ok
