"""Tools: schemas from signatures, loading from config, safe runs, and the built-in tools."""

import datetime
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from typing import Literal

import pytest

from chatsite.storage.database import db
from chatsite.tools import (
    MAX_RESULT_CHARS,
    ToolConfigError,
    ToolContext,
    ToolRegistry,
    ToolResult,
    function_schema,
    registry_from_config,
)
from chatsite.tools.builtin import BUILTIN_TOOLS, calculate, search_chats
from chatsite.tools.calculator import CalculationError
from chatsite.tools.processes import shared_pool
from tests.helpers import app_create_chat, messages, new_user, site_of
from tests.servers import ROOT, wait_until
from tests.tool_examples import (
    boom,
    describe,
    die,
    echo,
    huge,
    kitchen_sink,
    no_context,
    refuse,
    slow,
)

HERE = "tests.tool_examples"
PINNED = datetime.datetime(2024, 2, 29, 23, 30, 15, 123456, tzinfo=datetime.UTC)


@pytest.fixture
def context():
    return ToolContext(user_id=new_user(), transcripts=None, now=lambda: PINNED)


@pytest.fixture
def registry():
    return ToolRegistry([echo, describe, slow, boom, huge, die])


# Schemas


def test_schema_from_signature():
    schema = function_schema(kitchen_sink)
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "kitchen_sink"
    assert function["description"] == (
        "Exercise every supported annotation, with a first paragraph over two lines."
    )
    parameters = function["parameters"]
    assert parameters["type"] == "object"
    assert parameters["properties"] == {
        "name": {"type": "string", "description": "The name, continued on a second line."},
        "count": {"type": "integer", "description": "How many."},
        "ratio": {"type": "number", "description": "A fraction."},
        "flag": {"type": "boolean", "description": "Whether to."},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "Labels."},
        "mode": {"type": "string", "enum": ["fast", "slow"], "description": "How fast."},
        "level": {"type": "integer", "enum": [1, 2, 3], "description": "How much."},
        "note": {"type": "string", "description": "An optional remark."},
        "limit": {"type": "integer", "description": "An optional cap."},
        "scale": {"type": "number"},
    }
    assert "context" not in parameters["properties"]
    assert parameters["required"] == ["name", "count", "ratio", "flag", "tags", "mode", "level"]


def test_builtin_schemas():
    registry = ToolRegistry.from_paths(None)
    assert registry.names() == ["current_time", "calculate", "search_chats"]
    by_name = {s["function"]["name"]: s["function"] for s in registry.schemas()}
    assert by_name["current_time"]["parameters"]["required"] == []
    assert by_name["calculate"]["parameters"]["required"] == ["expression"]
    assert "sqrt" in by_name["calculate"]["description"]
    search = by_name["search_chats"]["parameters"]
    assert search["required"] == ["query"]
    assert search["properties"]["limit"]["type"] == "integer"
    for function in by_name.values():
        assert function["description"]
        assert "context" not in function["parameters"]["properties"]
        for prop in function["parameters"]["properties"].values():
            assert prop["description"]


def test_schemas_are_copies():
    registry = ToolRegistry([echo])
    registry.schemas()[0]["function"]["name"] = "changed"
    assert registry.schemas()[0]["function"]["name"] == "echo"


def _dict_arg(context: ToolContext, options: dict) -> str:
    return ""


def _union_arg(context: ToolContext, value: int | str) -> str:
    return ""


def _bare_list(context: ToolContext, values: list) -> str:
    return ""


def _nested_list(context: ToolContext, values: list[list[str]]) -> str:
    return ""


def _tuple_arg(context: ToolContext, pair: tuple[int, int]) -> str:
    return ""


def _mixed_literal(context: ToolContext, value: Literal[1, "a"]) -> str:
    return ""


def _unannotated(context: ToolContext, value) -> str:
    return ""


def _var_args(context: ToolContext, *values: int) -> str:
    return ""


def _var_kwargs(context: ToolContext, **values: int) -> str:
    return ""


def _positional_only(context: ToolContext, value: int, /) -> str:
    return ""


def _context_not_first(value: int, context: ToolContext) -> str:
    return ""


def _context_wrong_type(context: str, value: int) -> str:
    return ""


@pytest.mark.parametrize(
    "fn",
    [
        _dict_arg,
        _union_arg,
        _bare_list,
        _nested_list,
        _tuple_arg,
        _mixed_literal,
        _unannotated,
        _var_args,
        _var_kwargs,
        _positional_only,
        _context_not_first,
        _context_wrong_type,
        no_context,
        lambda context: "",
    ],
)
def test_unsupported_signatures_raise_type_error(fn):
    with pytest.raises(TypeError):
        function_schema(fn)
    with pytest.raises(TypeError):
        ToolRegistry([fn])


# Loading from paths and config


def test_from_paths_loads_functions():
    registry = ToolRegistry.from_paths([f"{HERE}:echo", "chatsite.tools.builtin:calculate"])
    assert registry.names() == ["echo", "calculate"]
    assert ToolRegistry.from_paths([]).names() == []


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("no_such_module_xyz:tool", "module not importable"),
        (f"{HERE}:missing_tool", "has no attribute 'missing_tool'"),
        (f"{HERE}:NOT_CALLABLE", "is not callable"),
        (f"{HERE}:no_context", "bad signature"),
        ("json:dumps", "bad signature"),
        ("chatsite.tools.builtin", "expected a 'module:function' path"),
        (":echo", "expected a 'module:function' path"),
        (f"{HERE}:", "expected a 'module:function' path"),
        (17, "expected a 'module:function' path"),
    ],
)
def test_from_paths_rejects_bad_paths(path, why):
    with pytest.raises(ToolConfigError) as raised:
        ToolRegistry.from_paths([path])
    assert isinstance(raised.value, ValueError)
    assert repr(path) in str(raised.value)
    assert why in str(raised.value)


def test_duplicate_names_are_rejected():
    with pytest.raises(ToolConfigError, match="already registered"):
        ToolRegistry.from_paths([f"{HERE}:echo", f"{HERE}:echo"])


@pytest.mark.parametrize(
    ("value", "names"),
    [
        (None, ["current_time", "calculate", "search_chats"]),
        ([f"{HERE}:echo"], ["echo"]),
        (json.dumps([f"{HERE}:echo", f"{HERE}:boom"]), ["echo", "boom"]),
        ("null", ["current_time", "calculate", "search_chats"]),
        ([], []),
    ],
)
def test_registry_from_config(value, names):
    assert registry_from_config({"TOOLS": value}).names() == names


def test_registry_from_config_defaults_to_builtins():
    assert registry_from_config({}).names() == [fn.__name__ for fn in BUILTIN_TOOLS]


@pytest.mark.parametrize("value", ["not json", '{"a": 1}', "17", 17, {"a": "b"}])
def test_registry_from_config_rejects_bad_values(value):
    with pytest.raises(ToolConfigError, match="TOOLS must be"):
        registry_from_config({"TOOLS": value})


# Running tools


def test_run_returns_the_result(registry, context):
    result = registry.run("echo", {"text": "ab", "times": 3}, context, timeout=2)
    assert result == ToolResult(name="echo", content="ababab", ok=True)


def test_unknown_tool(registry, context):
    result = registry.run("nope", {}, context, timeout=2)
    assert not result.ok
    assert result.content == (
        'error: unknown tool "nope"; available tools: echo, describe, slow, boom, huge, die'
    )
    assert not registry.run(None, {}, context, timeout=2).ok


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["hi"], "arguments must be a JSON object, not an array"),
        ('{"text": "hi"}', "arguments must be a JSON object, not a string"),
        (None, "arguments must be a JSON object, not null"),
        ({}, 'missing required argument "text"'),
        ({"text": "a", "context": "x"}, 'unexpected argument "context" (expected: text, times)'),
        ({"text": 3}, 'argument "text" must be a string, not an integer (3)'),
        ({"text": None}, 'argument "text" must be a string, not null'),
        ({"text": "a", "times": "2"}, 'argument "times" must be an integer, not a string ("2")'),
        ({"text": "a", "times": True}, 'argument "times" must be an integer, not a boolean'),
        ({"text": "a", "times": 2.0}, 'argument "times" must be an integer, not a number'),
    ],
)
def test_bad_arguments(registry, context, arguments, message):
    result = registry.run("echo", arguments, context, timeout=2)
    assert not result.ok
    assert result.content.startswith("error: invalid arguments for echo: ")
    assert message in result.content


def test_every_problem_is_reported_at_once(registry, context):
    result = registry.run("echo", {"times": "x", "extra": 1}, context, timeout=2)
    assert 'unexpected argument "extra"' in result.content
    assert 'missing required argument "text"' in result.content
    assert 'argument "times" must be an integer' in result.content


def test_argument_types_follow_the_schema(registry, context):
    result = registry.run("describe", {"ratio": 2, "tags": ["a", "b"]}, context, timeout=2)
    assert result.ok
    assert json.loads(result.content) == {
        "ratio": ["float", 2.0],
        "tags": ["a", "b"],
        "mode": "fast",
        "note": None,
    }
    result = registry.run("describe", {"ratio": 0.5, "tags": None, "mode": "slow"}, context, 2)
    assert json.loads(result.content)["mode"] == "slow"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"ratio": "0.5"}, 'argument "ratio" must be a number, not a string ("0.5")'),
        ({"ratio": False}, 'argument "ratio" must be a number, not a boolean'),
        ({"ratio": 1, "mode": "medium"}, 'argument "mode" must be one of "fast", "slow"'),
        ({"ratio": 1, "tags": "a"}, 'argument "tags" must be an array'),
        ({"ratio": 1, "tags": ["a", 1]}, 'argument "tags" item 1 must be a string'),
    ],
)
def test_bad_argument_types(registry, context, arguments, message):
    result = registry.run("describe", arguments, context, timeout=2)
    assert not result.ok
    assert message in result.content


def test_failing_tool(registry, context, caplog):
    with caplog.at_level(logging.WARNING, logger="chatsite.tools.registry"):
        result = registry.run("boom", {}, context, timeout=2)
    assert result == ToolResult("boom", "error: tool failed: RuntimeError: boom", ok=False)
    (record,) = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert 'raise RuntimeError("boom")' in record.getMessage()  # the tool process's traceback


def test_a_tool_error_with_a_newline_forges_no_log_line(context, caplog):
    registry = ToolRegistry([refuse])
    reason = "no\nERROR chatsite.auth: FORGED"
    result = registry.run("refuse", {"reason": reason}, context, timeout=5)
    assert result.content == f"error: tool failed: ValueError: {reason}"  # the model sees it
    assert "FORGED" in caplog.text
    assert not [line for line in caplog.text.splitlines() if line.startswith("ERROR")]


def test_slow_tool_times_out(registry, context):
    result = registry.run("slow", {}, context, timeout=0.2)
    assert result == ToolResult(name="slow", content="error: tool timed out after 0.2 s", ok=False)


def test_a_tool_that_kills_its_process_is_an_error_and_the_process_is_replaced(registry, context):
    result = registry.run("die", {}, context, timeout=5)
    assert result == ToolResult("die", "error: tool failed: the tool process exited", ok=False)
    assert registry.run("echo", {"text": "still here"}, context, timeout=5).ok


def test_a_call_waits_for_a_free_tool_process_at_most_its_time_limit(context):
    registry = ToolRegistry([echo, slow], processes=1)
    assert registry.run("echo", {"text": "warm"}, context, timeout=5).ok
    pool = shared_pool(1)
    results = {}
    busy = threading.Thread(
        target=lambda: results.update(slow=registry.run("slow", {}, context, timeout=10))
    )
    busy.start()
    assert wait_until(lambda: not pool.pids())  # the only process is running `slow`
    waiting = registry.run("echo", {"text": "hi"}, context, timeout=0.2)
    busy.join()
    assert waiting == ToolResult(
        "echo",
        "error: the server is too busy to run tools now (no tool process was free within 0.2 s)",
        ok=False,
    )
    assert results["slow"].content == "done"


def test_long_results_are_truncated(registry, context):
    result = registry.run("huge", {}, context, timeout=2)
    assert result.ok
    assert len(result.content) == MAX_RESULT_CHARS
    assert result.content.startswith("x" * 1000)
    assert result.content.endswith("[truncated: the result was 50,000 characters]")


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json, os, sys, uuid
    from pathlib import Path
    import gevent
    from chatsite.storage.database import db
    from chatsite.storage.tables import Chat, User
    from chatsite.tools import ToolContext, ToolRegistry
    from chatsite.tools.builtin import search_chats
    from chatsite.tools.processes import shared_pool
    from chatsite.greenlets import gevent_active
    from tests import tool_examples as t
    from tests.helpers import build_app, new_user, site_of

    folder = Path(sys.argv[1])
    app = build_app(folder, f"sqlite:///{folder}/chatsite.db")
    user, chat_id = new_user(), str(uuid.uuid4())
    with db.connection_context():
        User.create(uuid=user)
        Chat.create(id=chat_id, owner=user, name="New chat")
    chats = site_of(app).transcripts
    chats.create(user, chat_id, [{"role": "user", "content": "gevent banana"}])

    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    registry = ToolRegistry(
        [t.slow, t.echo, search_chats], database_url=app.config["DATABASE_URL"]
    )
    context = ToolContext(user_id=user, transcripts=chats)
    echo = registry.run("echo", {"text": "hi", "times": 2}, context, timeout=5)
    pool = shared_pool(registry.processes)
    before = set(pool.pids())
    background = gevent.spawn(ticker)
    slow = registry.run("slow", {}, context, timeout=0.2)
    background.kill()
    killed = sorted(before - set(pool.pids()))
    found = registry.run("search_chats", {"query": "banana"}, context, timeout=5)
    print(json.dumps({
        "patched": gevent_active(),
        "slow": slow.content,
        "ticks": len(ticks),
        "killed": killed,
        "alive": [os.path.exists(f"/proc/{pid}") for pid in killed],
        "processes": len(pool.pids()),
        "echo": echo.content,
        "found": found.content,
        "chat_id": chat_id,
    }))
    """
)


def test_tools_under_gevent_monkey_patching(tmp_path):
    """As in a gunicorn gevent worker: tool processes, other greenlets keep running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSITE_")}
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["patched"] is True
    assert report["slow"] == "error: tool timed out after 0.2 s"
    assert report["ticks"] >= 2  # the other greenlets kept running while the request waited
    assert len(report["killed"]) == 1  # the process that ran the slow tool was killed,
    assert report["alive"] == [False]  # reaped,
    assert report["processes"] == 2  # and replaced
    assert report["echo"] == "hihi"
    (match,) = json.loads(report["found"])
    assert match["chat_id"] == report["chat_id"]
    assert match["excerpt"] == "gevent banana"


# current_time


@pytest.fixture
def builtins():
    return ToolRegistry.from_paths(None)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (None, "2024-02-29T23:30:15+00:00 (Thursday, UTC)"),
        ("UTC", "2024-02-29T23:30:15+00:00 (Thursday, UTC)"),
        ("Europe/Paris", "2024-03-01T00:30:15+01:00 (Friday, Europe/Paris)"),
        ("America/New_York", "2024-02-29T18:30:15-05:00 (Thursday, America/New_York)"),
        ("Asia/Kolkata", "2024-03-01T05:00:15+05:30 (Friday, Asia/Kolkata)"),
    ],
)
def test_current_time(builtins, context, zone, expected):
    arguments = {} if zone is None else {"timezone": zone}
    result = builtins.run("current_time", arguments, context, timeout=2)
    assert result == ToolResult("current_time", expected, True)


def test_current_time_treats_a_naive_clock_as_utc(builtins):
    naive = ToolContext(user_id="u", transcripts=None, now=lambda: PINNED.replace(tzinfo=None))
    result = builtins.run("current_time", {"timezone": "Europe/Paris"}, naive, timeout=2)
    assert result.content.startswith("2024-03-01T00:30:15+01:00")


def test_current_time_defaults_to_the_real_clock(builtins):
    real = ToolContext(user_id="u", transcripts=None)
    result = builtins.run("current_time", {}, real, timeout=2)
    shown = datetime.datetime.fromisoformat(result.content.split(" ")[0])
    assert abs(shown - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(seconds=5)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../../etc/passwd", "/etc/passwd", "x" * 500])
def test_current_time_unknown_zone(builtins, context, zone):
    result = builtins.run("current_time", {"timezone": zone}, context, timeout=2)
    assert not result.ok
    assert result.content.startswith("error: tool failed: ValueError: unknown time zone")
    assert "IANA" in result.content


# calculate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("2 ** -2", "0.25"),
        ("-+-3", "3"),
        ("0.1 + 0.2", "0.30000000000000004"),
        ("sqrt(16)", "4.0"),
        ("abs(-5)", "5"),
        ("round(2.567, 2)", "2.57"),
        ("round(12345, -2)", "12300"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("factorial(20)", "2432902008176640000"),
        ("log(8, 2)", "3.0"),
        ("exp(0) + sin(0) + cos(0) + tan(0)", "2.0"),
        ("pi", repr(3.141592653589793)),
        ("e", repr(2.718281828459045)),
        ("2 ** 100", str(2**100)),
        ("1_000 * 3", "3000"),
    ],
)
def test_calculate(builtins, context, expression, expected):
    result = builtins.run("calculate", {"expression": expression}, context, timeout=2)
    assert result == ToolResult("calculate", expected, True)


def test_calculate_big_integers_are_exact(builtins, context):
    result = builtins.run("calculate", {"expression": "10 ** 5000 + 1"}, context, timeout=2)
    assert result.ok
    assert result.content == "1" + "0" * 4999 + "1"  # past Python's 4300-digit str() limit
    negative = builtins.run("calculate", {"expression": "-(7 ** 8000)"}, context, timeout=2)
    assert negative.content.startswith("-")
    assert int(negative.content[:50]) < 0


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "too large"),
        ("factorial(10**6)", "factorial needs a whole number from 0 to 1000"),
        ("(10**5000)**5000", "too large"),
        ("2 ** 10 ** 10", "too large"),
        ("10 ** 10000", "too large"),
        ("(10**3000) * (10**3000) * (10**3000) * (10**3000)", "too large"),
        ("factorial(1000) ** 4", "too large"),
        ("1e308 * 10", "out of the range"),
        ("1e999", "out of the range"),
        ("exp(1000)", "exp()"),
        ("sin(10 ** 9000)", "sin()"),
        ("10 ** 9000 / 3", "number too large"),
        ("round(1.5, 10 ** 9)", "round's second argument"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("sqrt(-1)", "sqrt(): math domain error"),
        ("(-8) ** (1/3)", "not a real number"),
        ("factorial(-1)", "factorial needs"),
        ("factorial(2.5)", "factorial needs"),
        ("__import__('os').system('true')", "unsupported syntax"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("(1).real", "unsupported syntax (Attribute)"),
        ("x + 1", "unknown name 'x'"),
        ("sqrt", "sqrt is a function"),
        ("pi()", "unknown function 'pi'"),
        ("sqrt(1, 2)", "sqrt() takes 1 argument(s), not 2"),
        ("round(x=1)", "plain positional arguments"),
        ("True + 1", "only numbers"),
        ("'a' * 10", "only numbers"),
        ("1j", "only numbers"),
        ("[1, 2]", "unsupported syntax (List)"),
        ("1 < 2", "unsupported syntax (Compare)"),
        ("1 << 100000", "unsupported syntax (BinOp)"),
        ("lambda: 1", "unsupported syntax (Lambda)"),
        ("1 +", "invalid expression"),
        ("", "empty"),
        ("1\x00", "invalid expression"),
        ("1" + "+1" * 300, "longer than 500 characters"),
        ("-" * 300 + "1", "too complex"),
        ("(" * 240 + "1" + ")" * 240, "too many nested parentheses"),
    ],
)
def test_calculate_refuses_quickly(builtins, context, expression, message):
    result = builtins.run("calculate", {"expression": expression}, context, timeout=2)
    assert not result.ok
    assert result.content.startswith("error: tool failed: CalculationError: ")
    assert message in result.content  # refused, not timed out: the bound comes first
    with pytest.raises(CalculationError) as refused:
        calculate(context, expression)
    assert message in str(refused.value)


# search_chats


@pytest.fixture(params=["files", "database"])
def app(request, make_app):
    """This module's app: the real app over both chat stores (and both databases)."""
    return make_app(CHAT_STORE=request.param)


def new_chat(app, post, token_for, user, *texts):
    """Create a chat through the endpoint, then store its conversation of `texts`."""
    chat_id = app_create_chat(post, token_for(user))
    with db.connection_context():
        site_of(app).transcripts.write(user, chat_id, messages(*texts))
    return chat_id


def search(app, user, arguments):
    context = ToolContext(user_id=user, transcripts=site_of(app).transcripts)
    return site_of(app).tools.run("search_chats", arguments, context, timeout=5)


def test_search_never_returns_another_users_chats(app, post, token_for):
    alice, bob = new_user(), new_user()
    alice_chats = {
        new_chat(app, post, token_for, alice, f"alice secret {i}: banana bread") for i in range(3)
    }
    bob_chat = new_chat(app, post, token_for, bob, "what rhymes with banana?", "bandana")
    result = search(app, bob, {"query": "banana", "limit": 20})
    assert result.ok, result.content
    matches = json.loads(result.content)
    assert [m["chat_id"] for m in matches] == [bob_chat]
    assert matches[0] == {
        "chat_id": bob_chat,
        "chat_name": "New chat",
        "role": "user",
        "excerpt": "what rhymes with banana?",
    }
    assert not alice_chats & {m["chat_id"] for m in matches}
    assert "alice" not in result.content
    nothing = search(app, bob, {"query": "alice secret"})
    assert nothing == ToolResult(
        "search_chats", 'No matches for "alice secret" in your saved chats.', True
    )


def test_search_newest_first_with_limit_and_any_case(app, post, token_for, user):
    ids = [new_chat(app, post, token_for, user, f"Kiwi number {i}") for i in range(3)]
    new_chat(app, post, token_for, user, "nothing here")
    result = search(app, user, {"query": "KIWI", "limit": 2})
    matches = json.loads(result.content)
    assert [m["chat_id"] for m in matches] == [ids[2], ids[1]]
    assert matches[0]["excerpt"] == "Kiwi number 2"


def test_search_excerpt_and_roles(app, post, token_for, user):
    long_text = "a" * 500 + " the needle is here " + "b" * 500
    chat_id = new_chat(app, post, token_for, user, "hello", long_text)
    (match,) = json.loads(search(app, user, {"query": "needle"}).content)
    assert match["chat_id"] == chat_id
    assert match["role"] == "assistant"
    assert "the needle is here" in match["excerpt"]
    assert match["excerpt"].startswith("…")
    assert match["excerpt"].endswith("…")
    assert len(match["excerpt"]) <= 162


def test_search_skips_chats_without_contents(app, post, token_for, user):
    kept = new_chat(app, post, token_for, user, "plum jam")
    lost = new_chat(app, post, token_for, user, "plum pie")
    with db.connection_context():
        site_of(app).transcripts.delete(user, lost)
    result = search(app, user, {"query": "plum"})
    assert result.ok
    assert [m["chat_id"] for m in json.loads(result.content)] == [kept]


def test_search_keeps_an_open_connection_open(app, post, token_for, user):
    new_chat(app, post, token_for, user, "fig")
    context = ToolContext(user_id=user, transcripts=site_of(app).transcripts)
    db.connect()
    try:
        assert json.loads(search_chats(context, "fig"))[0]["excerpt"] == "fig"
        assert not db.is_closed()
    finally:
        db.close()
    assert json.loads(search_chats(context, "fig"))[0]["excerpt"] == "fig"
    assert db.is_closed()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"query": ""}, "query must be 1 to 200 characters"),
        ({"query": "   "}, "query must be 1 to 200 characters"),
        ({"query": "q" * 201}, "query must be 1 to 200 characters"),
        ({"query": "x", "limit": 0}, "limit must be from 1 to 20"),
        ({"query": "x", "limit": 21}, "limit must be from 1 to 20"),
        ({"query": "x", "limit": "5"}, 'argument "limit" must be an integer'),
        ({"limit": 5}, 'missing required argument "query"'),
    ],
)
def test_search_bad_arguments(app, user, arguments, message):
    result = search(app, user, arguments)
    assert not result.ok
    assert message in result.content
