"""The tool loop of /chat over real HTTP: the dev instance's `tooler` model asks for tools."""

import json
import logging

import pytest

from chatsite.tools import ToolConfigError
from tests.helpers import chat_body, create_chat, get_chat, stream, upstream_bodies


def ask(url, token, content, **extra):
    """Ask the dev instance's `tooler` model, which calls the tools the text names."""
    response, lines = stream(url, "/chat", chat_body(token, content, model="tooler", **extra))
    assert response.status_code == 200
    return lines


def sent_calls(message, kind):
    """An assistant message's tool calls as the instance got them: [(name, arguments)]."""
    calls = message["tool_calls"]
    if kind == "openai":  # ids on every call, arguments as JSON text
        assert all(call["type"] == "function" and call["id"] for call in calls)
        return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
    return [(call["function"]["name"], call["function"]["arguments"]) for call in calls]


def sent_result(messages, kind, position=-1):
    """A tool result as the instance got it, with the call it answers: (name, content)."""
    result = messages[position]
    assert result["role"] == "tool"
    if kind == "ollama":
        return result["tool_name"], result["content"]
    assert set(result) == {"role", "tool_call_id", "content"}
    calls = [call for m in messages if m["role"] == "assistant" for call in m.get("tool_calls", [])]
    answered = [call for call in calls if call["id"] == result["tool_call_id"]]
    assert len(answered) == 1
    return answered[0]["function"]["name"], result["content"]


def test_tool_round_trip(kind_live, token_for, upstream, kind):
    live = kind_live
    token = token_for()
    chat_id = create_chat(live.url, token)
    lines = ask(live.url, token, 'call calculate {"expression": "6*7"}', chatfile=chat_id)
    tool_lines = [line for line in lines if "tool" in line]
    assert tool_lines == [{"status": "ok", "msg": "", "done": False, "tool": "calculate"}]
    assert lines[-1]["done"] is True
    assert lines[-1]["fullMsg"] == "Tool calculate said: 42"
    assert lines[-1]["fullMsg"] == "".join(line["msg"] for line in lines[:-1])

    first, second = upstream_bodies(upstream, kind)
    offered = {tool["function"]["name"] for tool in first["tools"]}
    assert offered == {"current_time", "calculate", "search_chats"}
    assert second["messages"][-2]["role"] == "assistant"
    assert sent_calls(second["messages"][-2], kind) == [("calculate", {"expression": "6*7"})]
    assert sent_result(second["messages"], kind) == ("calculate", "42")
    if kind == "ollama":
        assert second["messages"][-2]["tool_calls"] == [
            {"function": {"name": "calculate", "arguments": {"expression": "6*7"}}}
        ]
        assert second["messages"][-1] == {"role": "tool", "content": "42", "tool_name": "calculate"}

    contents = get_chat(live.url, token, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant", "tool", "assistant"]
    assert contents[1]["tool_calls"][0]["function"] == {
        "name": "calculate",
        "arguments": {"expression": "6*7"},  # one shape, whichever wire
    }
    assert contents[2]["content"] == "42" and contents[2]["tool_name"] == "calculate"
    assert contents[3]["content"] == "Tool calculate said: 42"
    assert all(m["timestamp"].endswith("Z") for m in contents)

    # The saved history goes back to the model unchanged, tool messages included.
    history = [*contents, {"role": "user", "content": "thanks"}]
    body = {"token": token, "model": "tooler", "messages": history, "chatfile": chat_id}
    _, lines = stream(live.url, "/chat", body)
    assert lines[-1]["done"] is True
    sent = upstream_bodies(upstream, kind)[-1]["messages"]
    assert sent_calls(sent[1], kind) == [("calculate", {"expression": "6*7"})]
    assert sent_result(sent, kind, 2) == ("calculate", "42")
    if kind == "ollama":
        assert sent[1]["tool_calls"] == contents[1]["tool_calls"]
        assert sent[2] == {"role": "tool", "content": "42", "tool_name": "calculate"}


def test_two_calls_in_one_round(kind_live, token_for):
    live = kind_live
    lines = ask(
        live.url,
        token_for(),
        'call calculate {"expression": "1+1"} and call current_time {"timezone": "UTC"}',
    )
    assert [line["tool"] for line in lines if "tool" in line] == ["calculate", "current_time"]
    assert lines[-1]["fullMsg"].startswith("Tool calculate said: 2; ")


def test_unknown_tool_is_answered_and_stream_goes_on(kind_live, token_for, upstream, kind):
    lines = ask(kind_live.url, token_for(), "call rm_rf {}")
    assert [line["tool"] for line in lines if "tool" in line] == ["rm_rf"]
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    tool_message = upstream_bodies(upstream, kind)[-1]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"].startswith('error: unknown tool "rm_rf"')


def test_failing_tool_and_bad_arguments(kind_live, token_for, upstream, kind):
    live = kind_live
    lines = ask(live.url, token_for(), 'call calculate {"expression": "1/0"}')
    assert lines[-1]["done"] is True
    assert "error" in upstream_bodies(upstream, kind)[-1]["messages"][-1]["content"]
    lines = ask(live.url, token_for(), 'call calculate {"expr": 5}')
    assert lines[-1]["done"] is True
    assert "invalid arguments" in upstream_bodies(upstream, kind)[-1]["messages"][-1]["content"]


def test_slow_tool_times_out(make_live, token_for, upstream):
    live = make_live(TOOLS=["tests.tool_examples:slow_tool"], TOOL_TIMEOUT=0.2)
    lines = ask(live.url, token_for(), 'call slow_tool {"seconds": 3}')
    assert lines[-1]["done"] is True
    assert "timed out" in upstream_bodies(upstream)[-1]["messages"][-1]["content"]


def test_operator_tools_get_the_callers_context(make_live, token_for, user, upstream):
    live = make_live(TOOLS='["tests.tool_examples:whoami"]')
    lines = ask(live.url, token_for(user), "call whoami")
    assert lines[-1]["fullMsg"] == f"Tool whoami said: {user}"
    offered = upstream_bodies(upstream)[0]["tools"]
    assert [tool["function"]["name"] for tool in offered] == ["whoami"]


def test_too_many_rounds_ends_with_a_note(make_live, token_for):
    live = make_live(MAX_TOOL_ROUNDS=0)
    lines = ask(live.url, token_for(), "call current_time")
    assert not any("tool" in line for line in lines)  # no tool was run
    assert "too many times" in lines[-1]["fullMsg"]
    assert lines[-1]["done"] is True


def test_search_sees_only_the_callers_chats(live, token_for):
    alice, bob = token_for(), token_for()
    chat_id = create_chat(live.url, alice)
    stream(
        live.url,
        "/chat",
        chat_body(alice, "my secret is pineapple", model="echo", chatfile=chat_id),
    )
    found = ask(live.url, alice, 'call search_chats {"query": "pineapple"}')[-1]["fullMsg"]
    assert chat_id in found
    missed = ask(live.url, bob, 'call search_chats {"query": "pineapple"}')[-1]["fullMsg"]
    assert chat_id not in missed
    assert "No matches" in missed


def test_models_without_tools_are_offered_none(live, token_for, upstream):
    stream(live.url, "/chat", chat_body(token_for(), "call calculate {}", model="echo"))
    assert "tools" not in upstream_bodies(upstream)[-1]


def test_no_tools_configured(make_live, token_for, upstream):
    live = make_live(TOOLS=[])
    lines = ask(live.url, token_for(), "call calculate {}")
    assert "tools" not in upstream_bodies(upstream)[-1]
    assert lines[-1]["fullMsg"].startswith("You said:")


def test_bad_tool_path_fails_at_start(make_app):
    with pytest.raises(ToolConfigError, match="no_such_module"):
        make_app(TOOLS=["no_such_module:tool"])


def test_calls_past_the_round_bound_are_refused(make_live, token_for, upstream):
    live = make_live(MAX_TOOL_CALLS_PER_ROUND=2)
    calls = " ".join(f'call calculate {{"expression": "{n}+1"}}' for n in range(3))
    lines = ask(live.url, token_for(), calls)
    assert [line["tool"] for line in lines if "tool" in line] == ["calculate", "calculate"]
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    sent = upstream_bodies(upstream)[-1]["messages"]
    answers = [m["content"] for m in sent if m["role"] == "tool"]
    assert answers[:2] == ["1", "2"]
    assert answers[2].startswith("error: too many tool calls in one round (at most 2)")


def test_search_finds_old_chats_behind_bulky_ones(live, token_for, user):
    """Chats full of huge tool-call arguments are neither indexed nor read by a search:
    the index finds the oldest chat too, where a scan would have run out of its budget."""
    token = token_for(user)
    transcripts = live.app.extensions["chatsite"].transcripts
    bulky = {"function": {"name": "calculate", "arguments": {"expression": "9" * 1_000_000}}}

    def saved_chat(messages):
        chat_id = create_chat(live.url, token)
        transcripts.write(user, chat_id, messages)
        return chat_id

    oldest = saved_chat([{"role": "user", "content": "the quince is old"}])
    for _ in range(6):  # 6 MB, newer than the oldest chat, with little text
        saved_chat([{"role": "assistant", "content": "", "tool_calls": [bulky]}])
    newest = saved_chat([{"role": "user", "content": "the quince is new"}])

    found = ask(live.url, token, 'call search_chats {"query": "quince"}')[-1]["fullMsg"]
    assert newest in found
    assert oldest in found
    assert "99999" not in found
    nothing = ask(live.url, token, 'call search_chats {"query": "99999"}')[-1]["fullMsg"]
    assert "No matches" in nothing


def test_a_tool_name_with_a_newline_forges_no_log_line(live, token_for, upstream, caplog):
    caplog.set_level(logging.INFO)
    name = "calculate\nERROR chatsite.auth: FORGED admin signed in"
    lines = ask(live.url, token_for(), f"call {json.dumps(name)} {{}}")
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    answer = upstream_bodies(upstream)[-1]["messages"][-1]["content"]
    assert answer.startswith("error: unknown tool")
    assert any("FORGED" in line for line in caplog.text.splitlines())  # it was logged...
    assert not any(line.startswith("ERROR chatsite.auth") for line in caplog.text.splitlines())


def test_deeply_nested_arguments_are_an_error_result(live, token_for, upstream, caplog):
    token = token_for()
    chat_id = create_chat(live.url, token)
    deep = "[" * 500 + "]" * 500
    lines = ask(live.url, token, f'call calculate {{"expression": {deep}}}', chatfile=chat_id)
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    assert "nested too deeply" in lines[-1]["fullMsg"]
    assert not [record for record in caplog.records if record.exc_info]  # no traceback
    contents = get_chat(live.url, token, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant", "tool", "assistant"]
    assert contents[1]["tool_calls"][0]["function"] == {"name": "calculate", "arguments": {}}
