"""Tools under gunicorn's gevent workers: a runaway tool is killed, a drain saves the chat.

Tools run in tool processes (`python -m chatsite.tools`), children of the worker; these
tests find them in /proc.
"""

import json
import signal
from pathlib import Path

import requests

from chatsite.coordination import FileCoordinator
from tests.helpers import (
    TIMEOUT,
    Stream,
    chat_body,
    create_chat,
    get_chat,
    site_env,
    unanswered_tool_calls,
    user_is_free,
)
from tests.servers import cpu_seconds, wait_until


def tool_processes(worker: int) -> list[int]:
    """The worker's children that are tool processes."""
    children = Path(f"/proc/{worker}/task/{worker}/children").read_text().split()
    return [int(pid) for pid in children if b"chatsite.tools" in cmdline(int(pid))]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tool_body(token, content, **extra):
    return chat_body(token, content, model="tooler", **extra)


def test_a_runaway_tool_is_killed_and_never_slows_other_users(
    tmp_path, launch, upstream, token_for
):
    timeout = 4
    env = site_env(
        tmp_path,
        [{"url": upstream.url, "max_concurrent": 4}],
        TOOLS=["tests.tool_examples:spin"],
        TOOL_TIMEOUT=timeout,
        TOOL_PROCESSES=1,
    )
    alice, bob = token_for(), token_for()
    server = launch(env, bob)
    (worker,) = server.worker_pids()

    stream = Stream(server.url, tool_body(alice, "call spin {}"))
    assert stream.first["tool"] == "spin"
    spinning = wait_until(lambda: tool_processes(worker), timeout=10)
    assert len(spinning) == 1, server.log()
    (tool,) = spinning
    assert wait_until(lambda: cpu_seconds(tool) > 0.3, timeout=10)  # it is spinning

    # Another user is served while the tool spins (the worker's greenlets are not starved).
    settings = requests.post(f"{server.url}/settings", json={"token": bob}, timeout=timeout)
    assert settings.status_code == 200
    assert running(tool)  # answered during the tool's run, not after it was stopped

    lines = list(stream.lines)
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"
    assert "timed out after 4 s" in lines[-1]["fullMsg"]

    # The process that spun was killed and reaped (its CPU is free), and a fresh one waits.
    assert not running(tool)
    assert wait_until(lambda: len(tool_processes(worker)) == 1)
    assert tool_processes(worker) != [tool]


def test_sigterm_during_a_tool_ends_the_stream_and_saves_the_chat(
    tmp_path, launch, upstream, token_for, user
):
    token = token_for(user)
    env = site_env(
        tmp_path,
        [{"url": upstream.url, "max_concurrent": 4}],
        TOOLS=["tests.tool_examples:slow_tool"],
        TOOL_TIMEOUT=60,
        GRACEFUL_TIMEOUT=3,
    )
    server = launch(env, token)
    (worker,) = server.worker_pids()
    chat_id = create_chat(server.url, token)
    request = 'call slow_tool {"seconds": 30} call slow_tool {"seconds": 1}'
    stream = Stream(server.url, tool_body(token, request, chatfile=chat_id))
    assert stream.first["tool"] == "slow_tool"
    sleeping = wait_until(lambda: tool_processes(worker), timeout=10)
    assert sleeping, server.log()

    server.process.send_signal(signal.SIGTERM)
    lines = list(stream.lines)
    assert lines[-1]["status"] == "error" and lines[-1]["done"] is True, lines
    assert "restarting" in lines[-1]["msg"]
    assert server.process.wait(10) == 0, server.log()
    # No tool process outlives its worker: the busy one is killed, the idle ones see EOF.
    assert wait_until(lambda: not any(running(pid) for pid in sleeping)), sleeping
    assert user_is_free(FileCoordinator(tmp_path / "locks"), user)

    again = launch(env, token)
    contents = get_chat(again.url, token, chat_id)
    assert contents[0]["role"] == "user" and contents[0]["content"] == request
    assert contents[1]["role"] == "assistant"
    assert contents[1]["tool_calls"][0]["function"]["name"] == "slow_tool"
    assert contents[-1]["incomplete"] is True
    # Each call has its answer, the one cut short and the one never started alike: the
    # saved chat is a conversation any chat server takes back.
    assert [m["role"] for m in contents] == ["user", "assistant", "tool", "tool", "assistant"]
    for result in contents[2:4]:
        assert result == {
            "role": "tool",
            "content": "interrupted",
            "tool_name": "slow_tool",
            "timestamp": result["timestamp"],
        }
    assert unanswered_tool_calls(contents) == []
    sent_back = {"token": token, "model": "echo", "messages": contents}
    response = requests.post(f"{again.url}/chat", json=sent_back, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert json.loads(response.text.splitlines()[-1])["status"] == "ok"
