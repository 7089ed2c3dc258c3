"""Model `options` over real HTTP: sampling settings only, within bounds, answers bounded."""

import pytest

from chatsite import create_app
from chatsite.api.options import SAMPLING_OPTIONS
from tests.helpers import TEST_SECRET, echo_body, stream

# What a front end may send: every allowed option at once, each at a sane value.
SAMPLING = {
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.1,
    "repeat_last_n": 64,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "seed": 42,
    "stop": ["\n\nUser:", "###"],
    "num_predict": 256,
    "mirostat": 2,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
}
# Options that make Ollama reload the model for every user of the GPU.
HARDWARE = {
    "num_ctx": 1048576,
    "num_gpu": 999,
    "num_batch": 4096,
    "main_gpu": 1,
    "use_mmap": False,
    "num_thread": 256,
    "low_vram": True,
}


@pytest.fixture
def database_url(tmp_path):
    """Options never reach the database: SQLite alone keeps these tests quick."""
    return f"sqlite:///{tmp_path / 'chatsite.db'}"


def chat_body(token, options, **extra):
    return echo_body(token, "hi", options=options, **extra)


def send(url, path, body):
    """POST and return (status, the parsed stream lines or the JSON error)."""
    response, lines = stream(url, path, body)
    return response.status_code, lines if lines is not None else response.json()


def upstream_options(upstream):
    return upstream.requests()[-1]["body"]["options"]


def test_every_sampling_option_passes_verbatim(live, token_for, upstream):
    assert set(SAMPLING) == {*SAMPLING_OPTIONS, "stop", "num_predict"}
    status, lines = send(live.url, "/chat", chat_body(token_for(), SAMPLING))
    assert status == 200 and lines[-1]["done"] is True
    assert upstream_options(upstream) == SAMPLING


@pytest.mark.parametrize("path", ["/chat", "/generate"])
@pytest.mark.parametrize("name", sorted(HARDWARE))
def test_hardware_options_are_refused_by_name(live, token_for, upstream, path, name):
    body = chat_body(token_for(), {"temperature": 0.5, name: HARDWARE[name]})
    if path == "/generate":
        body = {"token": body["token"], "model": "echo", "prompt": "hi", "options": body["options"]}
    before = len(upstream.requests())
    status, error = send(live.url, path, body)
    assert status == 400
    assert error["status"] == "error"
    assert f"options.{name}" in error["msg"] and "not an allowed option" in error["msg"].lower()
    assert "temperature" not in error["msg"]
    assert len(upstream.requests()) == before  # nothing reached the chat instance


@pytest.mark.parametrize(
    "name, value",
    [
        ("num_predict", -1),  # unbounded in Ollama
        ("num_predict", -2),  # "fill the context"
        ("num_predict", 0),
        ("num_predict", 4097),
        ("num_predict", 10.5),
        ("temperature", 50),
        ("temperature", -1),
        ("temperature", "hot"),
        ("temperature", True),
        ("temperature", [0.5]),
        ("top_p", 1.5),
        ("top_k", 2.5),
        ("top_k", 10**6),
        ("seed", -5),
        ("seed", 2**64),
        ("mirostat", 3),
        ("repeat_last_n", -2),
        ("stop", "###"),
        ("stop", [""]),
        ("stop", [1]),
        ("stop", ["x" * 201]),
        ("stop", ["s"] * 17),
    ],
)
def test_values_out_of_bounds_are_400_naming_the_option(live, token_for, name, value):
    status, error = send(live.url, "/chat", chat_body(token_for(), {name: value}))
    assert status == 400
    assert f"options.{name}" in error["msg"]


def test_an_answer_is_always_bounded(make_live, token_for, upstream):
    live = make_live()
    status, _ = send(live.url, "/chat", chat_body(token_for(), {"seed": 1}))
    assert status == 200
    assert upstream_options(upstream) == {"seed": 1, "num_predict": 4096}
    status, _ = send(live.url, "/generate", {"token": token_for(), "model": "echo", "prompt": "x"})
    assert status == 200
    assert upstream_options(upstream) == {"num_predict": 4096}
    # null means "not set": dropped, and the bound applies.
    status, _ = send(live.url, "/chat", chat_body(token_for(), {"num_predict": None, "seed": None}))
    assert status == 200
    assert upstream_options(upstream) == {"num_predict": 4096}


def test_max_num_predict_is_configurable(make_live, token_for, upstream):
    live = make_live(MAX_NUM_PREDICT=100)
    send(live.url, "/chat", chat_body(token_for(), {}))
    assert upstream_options(upstream) == {"num_predict": 100}
    status, _ = send(live.url, "/chat", chat_body(token_for(), {"num_predict": 100}))
    assert status == 200
    status, error = send(live.url, "/chat", chat_body(token_for(), {"num_predict": 101}))
    assert status == 400
    assert "options.num_predict" in error["msg"] and "100" in error["msg"]


def test_the_operator_can_allow_more(make_live, token_for, upstream):
    allowed = {"num_ctx": [512, 8192], "temperature": [0, 5], "site_flag": None}
    live = make_live(ALLOWED_OPTIONS=allowed)
    options = {"num_ctx": 4096, "temperature": 4.5, "site_flag": {"any": ["value"]}}
    status, _ = send(live.url, "/chat", chat_body(token_for(), options))
    assert status == 200
    assert upstream_options(upstream) == {**options, "num_predict": 4096}
    status, error = send(live.url, "/chat", chat_body(token_for(), {"num_ctx": 16384}))
    assert status == 400
    assert "options.num_ctx" in error["msg"]
    status, error = send(live.url, "/chat", chat_body(token_for(), {"num_gpu": 1}))
    assert status == 400
    assert "options.num_gpu" in error["msg"]


@pytest.mark.parametrize(
    "allowed",
    [
        ["num_ctx"],
        {"num_ctx": [8192, 512]},
        {"num_ctx": [1]},
        {"num_ctx": ["a", "b"]},
        {"num_ctx": 5},
        {"": None},
    ],
)
def test_a_bad_allowlist_stops_the_app_at_start(tmp_path, allowed):
    config = {"JWT_SECRET": TEST_SECRET, "CHAT_INSTANCES": [], "ALLOWED_OPTIONS": allowed}
    with pytest.raises(ValueError, match="ALLOWED_OPTIONS"):
        create_app(config, instance_path=str(tmp_path))


@pytest.mark.parametrize("value", [0, -1, "many", 2.5])
def test_a_bad_max_num_predict_stops_the_app_at_start(tmp_path, value):
    config = {"JWT_SECRET": TEST_SECRET, "CHAT_INSTANCES": [], "MAX_NUM_PREDICT": value}
    with pytest.raises(ValueError, match="MAX_NUM_PREDICT"):
        create_app(config, instance_path=str(tmp_path))


def nested(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_options_are_a_400(make_live, token_for, upstream):
    live = make_live(ALLOWED_OPTIONS={"site_flag": None})
    before = len(upstream.requests())
    status, error = send(live.url, "/chat", chat_body(token_for(), {"site_flag": nested(500)}))
    assert status == 400
    assert error["msg"].startswith("options.site_flag.0.0.0.0...: Nested more than 64 levels")
    status, error = send(live.url, "/chat", chat_body(token_for(), {"temperature": nested(500)}))
    assert status == 400
    assert "options.temperature" in error["msg"]
    assert len(upstream.requests()) == before
    # Deep, but within the bound: passes.
    status, _ = send(live.url, "/chat", chat_body(token_for(), {"site_flag": nested(60)}))
    assert status == 200


def test_deeply_nested_tool_arguments_are_a_400(live, token_for):
    call = {"function": {"name": "calculate", "arguments": {"x": nested(500)}}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "1", "tool_name": "calculate"},
    ]
    body = {"token": token_for(), "model": "echo", "messages": messages}
    status, error = send(live.url, "/chat", body)
    assert status == 400
    assert error["msg"].startswith("messages.1.tool_calls.0.function.arguments...: Nested")
