"""The fair line for the instances, /stop and affinity, over real gunicorn servers.

Every scenario runs chatsite under gunicorn's gevent workers (several, and two "hosts"
sharing Redis) in front of a development chat instance of its own, whose request log tells
the order in which requests reached the GPU.
"""

import fcntl
import json
import os
import signal
import threading
import time
from functools import partial

import pytest
import requests

from chatsite.coordination import FileCoordinator, RedisCoordinator
from chatsite.coordination.base import model_key
from chatsite.dev.instance import DevInstance
from tests.helpers import create_chat, get_chat, ndjson, numbered, sessions_on_workers, site_env
from tests.servers import ROOT, wait_until

DEV_OPTIONS = {"dev_token_delay": None, "dev_repeat": None}
NO_INSTANCE = {"status": "error", "msg": "no chat instance available", "done": True}
API_DOC = ROOT / "docs" / "API.md"


@pytest.fixture
def instance():
    """A development chat instance of this test alone: its request log is the test's."""
    with DevInstance() as dev:
        yield dev
    # Servers are stopped by `launch` first (it was requested later, so it ends first).


def host_env(folder, instance, **config):
    """One host in front of `instance` (one slot), allowed to use the dev instance's knobs."""
    config.setdefault("INSTANCE_WAIT_TIMEOUT", 20)
    return site_env(
        folder,
        [{"url": instance.url, "max_concurrent": 1}],
        ALLOWED_OPTIONS=DEV_OPTIONS,
        **config,
    )


def body(token, content="hello", delay=None, repeat=None, **extra):
    """A /chat body for the `slow` model; `delay` x `repeat` make it last."""
    options = {}
    if delay is not None:
        options["dev_token_delay"] = delay
    if repeat is not None:
        options["dev_repeat"] = repeat
    chat = {"token": token, "model": "slow", "messages": [{"role": "user", "content": content}]}
    return {**chat, **({"options": options} if options else {}), **extra}


class Reader:
    """A streamed answer read line by line; `close()` leaves as a client going away does.

    Lines are checked to be numbered (`seq`) and given without it.
    """

    def __init__(self, url, payload, session=None):
        post = (session or requests).post
        self.response = post(f"{url}/chat", json=payload, stream=True, timeout=30)
        self.status = self.response.status_code
        self._lines = numbered(ndjson(self.response.iter_lines()))

    def next(self):
        return next(self._lines)

    def rest(self):
        return list(self._lines)

    def close(self):
        self.response.close()


def served_order(instance):
    """The user messages of the /api/chat requests, in the order they reached the instance."""
    return [
        r["body"]["messages"][-1]["content"]
        for r in instance.requests()
        if r["path"] == "/api/chat"
    ]


def stop(url, token, session=None):
    post = (session or requests).post
    response = post(f"{url}/stop", json={"token": token}, timeout=30)
    return response.status_code, response.json()


def check_arrival_order(urls, instance, token_for, line, sessions=None):
    """Twelve users join the line one after the other while the slot is busy: they are
    served in that order. Every other one asks for `queue_updates` and is told its place.

    `line` counts the requests waiting (the test's own view of the lock folder or Redis),
    so each request is sent once the one before it is in line: no timing guesses.
    """
    blocker_token = token_for()
    blocker = Reader(urls[0], body(blocker_token, "blocker", delay=0.05, repeat=200))
    assert blocker.status == 200
    assert blocker.next()["status"] == "ok"
    results: list = [None] * 12

    def ask(index):
        url = urls[index % len(urls)]
        session = sessions[index % len(sessions)] if sessions else None
        updates = index % 2 == 0
        reader = Reader(url, body(token_for(), f"user {index}", queue_updates=updates), session)
        results[index] = (reader.status, reader.rest())

    threads = []
    for index in range(12):
        threads.append(threading.Thread(target=ask, args=(index,)))
        threads[-1].start()
        assert wait_until(lambda: line() == index + 1, timeout=10)  # noqa: B023
    assert stop(urls[-1], blocker_token)[0] == 200
    for thread in threads:
        thread.join(60)
    for index, (status, lines) in enumerate(results):
        assert status == 200
        if index % 2 == 0:
            assert lines[0] == {"status": "queued", "position": index + 1, "done": False}
            positions = [line["position"] for line in lines if line["status"] == "queued"]
            assert positions == sorted(positions, reverse=True)  # it only ever moves up
        assert lines[-1]["fullMsg"] == f"You said: user {index}"
    assert served_order(instance) == ["blocker"] + [f"user {i}" for i in range(12)]


def files_line(folder):
    """Count the requests waiting for `slow` on the host whose lock folder is `folder`."""
    observer = FileCoordinator(folder / "locks")
    return lambda: observer.waiting("slow:latest")


# --- arrival order, and /stop from wherever ------------------------------------------------


def test_arrival_order_with_one_worker(tmp_path, instance, launch, token_for):
    server = launch(host_env(tmp_path, instance), token_for())
    check_arrival_order([server.url], instance, token_for, files_line(tmp_path))


def test_arrival_order_and_stop_across_workers(tmp_path, instance, launch, token_for, user):
    server = launch(host_env(tmp_path, instance), token_for(), workers=3)
    sessions = [session for session, _ in sessions_on_workers(server, 6, workers=3)]
    check_arrival_order([server.url], instance, token_for, files_line(tmp_path), sessions)

    # A stream on one worker, stopped through another worker.
    token = token_for(user)
    on_worker = sessions_on_workers(server, 2, workers=2)
    (first, first_pid), (second, second_pid) = on_worker
    assert first_pid != second_pid
    chat_id = create_chat(server.url, token)
    reader = Reader(
        server.url, body(token, "go on", delay=0.05, repeat=200, chatfile=chat_id), first
    )
    assert reader.status == 200
    pieces = [reader.next()["msg"], reader.next()["msg"]]
    assert stop(server.url, token, second) == (200, {"status": "ok", "msg": "stopped"})
    lines = reader.rest()
    last = lines[-1]
    pieces += [line["msg"] for line in lines[:-1]]
    assert last == {
        "status": "ok",
        "msg": "",
        "fullMsg": "".join(pieces),
        "done": True,
        "stopped": True,
    }, server.log()
    # The user is free at once, the partial reply is saved as incomplete, nothing is left.
    follow = requests.post(f"{server.url}/chat", json=body(token, "again"), timeout=30)
    assert follow.status_code == 200
    saved = get_chat(server.url, token, chat_id)
    assert saved[1]["content"] == "".join(pieces) and saved[1]["incomplete"] is True
    assert stop(server.url, token) == (404, {"status": "error", "msg": "nothing to stop"})
    assert wait_until(lambda: instance.stats()["active_streams"] == 0)
    assert instance.stats()["disconnected_streams"] >= 1


def test_arrival_order_and_stop_across_hosts(tmp_path, instance, launch, token_for, redis_prefix):
    redis_url, prefix = redis_prefix
    shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": prefix}
    a = launch(host_env(tmp_path / "a", instance, **shared), token_for(), workers=2)
    b = launch(host_env(tmp_path / "b", instance, **shared), token_for(), workers=2)
    observer = RedisCoordinator(redis_url, prefix=prefix)
    try:
        line = partial(observer.waiting, "slow:latest")
        check_arrival_order([a.url, b.url], instance, token_for, line)
    finally:
        observer.close()

    # Stopped through the other host, while streaming and while waiting in line.
    streaming, waiting = token_for(), token_for()
    reader = Reader(a.url, body(streaming, delay=0.05, repeat=200))
    first = reader.next()["msg"]
    queued = Reader(b.url, body(waiting, queue_updates=True))
    assert queued.next() == {"status": "queued", "position": 1, "done": False}
    assert stop(a.url, waiting) == (200, {"status": "ok", "msg": "stopped"})
    assert queued.rest() == [
        {"status": "ok", "msg": "", "fullMsg": "", "done": True, "stopped": True}
    ]
    assert stop(b.url, streaming) == (200, {"status": "ok", "msg": "stopped"})
    lines = reader.rest()
    assert lines[-1]["stopped"] is True
    assert lines[-1]["fullMsg"] == first + "".join(line["msg"] for line in lines[:-1])
    assert stop(b.url, streaming)[0] == 404
    assert requests.post(f"{b.url}/chat", json=body(streaming), timeout=30).status_code == 200


# --- positions, a full line, a time-out in band ---------------------------------------------


def test_positions_full_line_and_time_out(tmp_path, instance, launch, token_for):
    env = host_env(tmp_path, instance, MAX_QUEUE=2, INSTANCE_WAIT_TIMEOUT=3)
    server = launch(env, token_for(), workers=2)
    blocker_token = token_for()
    blocker = Reader(server.url, body(blocker_token, delay=0.05, repeat=200))
    blocker.next()
    first = Reader(server.url, body(token_for(), "first", queue_updates=True))
    assert first.status == 200
    assert first.next() == {"status": "queued", "position": 1, "done": False}
    second = Reader(server.url, body(token_for(), "second", queue_updates=True))
    assert second.next() == {"status": "queued", "position": 2, "done": False}

    # The line is full: a third waits for nothing.
    full = requests.post(f"{server.url}/chat", json=body(token_for()), timeout=30)
    assert full.status_code == 503
    assert full.json()["status"] == "error" and full.headers["Retry-After"].isdigit()

    assert stop(server.url, blocker_token)[0] == 200
    assert first.rest()[-1] == {
        "status": "ok",
        "msg": "",
        "fullMsg": "You said: first",
        "done": True,
    }
    lines = second.rest()
    assert lines[0] == {"status": "queued", "position": 1, "done": False}
    assert [line["status"] for line in lines[1:]] == ["ok"] * (len(lines) - 1)
    assert lines[-1]["fullMsg"] == "You said: second"

    # Nobody frees the slot in time: the stream ends in band; without the flag, a 504.
    blocker = Reader(server.url, body(blocker_token, delay=0.05, repeat=200))
    blocker.next()
    late = Reader(server.url, body(token_for(), queue_updates=True))
    lines = [late.next(), *late.rest()]
    assert lines[0] == {"status": "queued", "position": 1, "done": False}
    assert all(line["status"] == "queued" for line in lines[:-1])
    assert lines[-1] == NO_INSTANCE
    timed_out = requests.post(f"{server.url}/chat", json=body(token_for()), timeout=30)
    assert timed_out.status_code == 504
    blocker.close()


# --- waiters that are gone ------------------------------------------------------------------


def test_gone_waiters_do_not_hold_up_the_line(tmp_path, instance, launch, token_for):
    """A waiter whose client left, and one whose worker was killed, are skipped."""
    server = launch(host_env(tmp_path, instance, INSTANCE_WAIT_TIMEOUT=8), token_for(), workers=2)
    by_worker: dict[int, list] = {}
    for session, pid in sessions_on_workers(server, 6, workers=2):
        by_worker.setdefault(pid, []).append(session)
    (_, keep), (doomed_pid, doomed) = by_worker.items()
    assert len(keep) >= 3 and doomed
    blocker_token = token_for()
    blocker = Reader(server.url, body(blocker_token, delay=0.05, repeat=200), keep[0])
    blocker.next()
    # Each gone waiter would hold the slot for a minute if it were served.
    slow = {"delay": 0.3, "repeat": 200, "queue_updates": True}
    left = Reader(server.url, body(token_for(), "left", **slow), keep[1])
    assert left.next()["position"] == 1
    killed = Reader(server.url, body(token_for(), "killed", **slow), doomed[0])
    assert killed.next()["position"] == 2
    last = Reader(server.url, body(token_for(), "last", queue_updates=True), keep[2])
    assert last.next()["position"] == 3
    left.close()
    os.kill(doomed_pid, signal.SIGKILL)
    assert stop(server.url, blocker_token, keep[0])[0] == 200
    lines = last.rest()
    assert lines[-1] == {"status": "ok", "msg": "", "fullMsg": "You said: last", "done": True}
    assert served_order(instance) == ["hello", "last"]
    killed.close()


def test_a_stop_past_stop_timeout_is_a_503_as_described(tmp_path, launch, upstream, token_for):
    """A running tool holds its request past STOP_TIMEOUT: /stop answers 503, as docs/API.md
    and /openapi.json say. The stop lands once the tool returns: the round's other call is
    not run, and is saved as interrupted."""
    token = token_for()
    env = site_env(
        tmp_path,
        [{"url": upstream.url, "max_concurrent": 4}],
        TOOLS=["tests.tool_examples:wait_for_file"],
        TOOL_TIMEOUT=60,
        STOP_TIMEOUT=0.5,
    )
    server = launch(env, token)
    chat_id = create_chat(server.url, token)
    done = tmp_path / "tool-done"
    ask = f"call wait_for_file {json.dumps({'path': str(done)})}"
    message = {"role": "user", "content": f"{ask} {ask}"}
    chat = {"token": token, "model": "tooler", "messages": [message], "chatfile": chat_id}
    reader = Reader(server.url, chat)
    assert reader.next()["tool"] == "wait_for_file"
    response = requests.post(f"{server.url}/stop", json={"token": token}, timeout=30)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {"status": "error", "msg": "the request did not stop in time"}
    done.touch()
    lines = reader.rest()
    assert lines == [{"status": "ok", "msg": "", "fullMsg": "", "done": True, "stopped": True}]
    assert stop(server.url, token)[0] == 404
    results = [m["content"] for m in get_chat(server.url, token, chat_id) if m["role"] == "tool"]
    assert results == ["the file is there", "interrupted"]

    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    answer = document["paths"]["/stop"]["post"]["responses"]["503"]
    assert "STOP_TIMEOUT" in answer["description"]
    assert "Retry-After" in answer["headers"]
    section = " ".join(API_DOC.read_text().split("### `POST /stop`")[1].split("###")[0].split())
    assert "503 `the request did not stop in time`" in section and "`STOP_TIMEOUT`" in section


def test_ticket_drafts_left_by_a_crash_are_removed_at_worker_start(
    tmp_path, instance, launch, token_for
):
    """A worker that dies between making a ticket's draft and renaming it into the line
    leaves the draft behind; the next worker to start removes it, and only it."""
    line = tmp_path / "locks" / "queue" / model_key("slow:latest")
    line.mkdir(parents=True)
    crashed, young, held = (line / f".{name}" for name in ("crashed", "young", "held"))
    for draft in (crashed, young, held):
        draft.touch()
    an_hour_ago = time.time() - 3600
    for draft in (crashed, held):
        os.utime(draft, (an_hour_ago, an_hour_ago))
    holder = os.open(held, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a live process holds it: never removed
    try:
        server = launch(host_env(tmp_path, instance), token_for())
        assert wait_until(lambda: not crashed.exists())
        assert young.exists() and held.exists()
        # The line itself works as ever.
        response = requests.post(f"{server.url}/chat", json=body(token_for()), timeout=10)
        assert response.status_code == 200
        assert json.loads(response.text.splitlines()[-1])["done"] is True
    finally:
        os.close(holder)


# --- affinity -------------------------------------------------------------------------------


def test_affinity_prefers_the_warm_instance_and_falls_back_at_once(tmp_path, launch, token_for):
    with DevInstance() as cold, DevInstance() as warm:
        warm.load("slow")
        instances = [
            {"url": cold.url, "max_concurrent": 1},
            {"url": warm.url, "max_concurrent": 1},
        ]
        env = site_env(tmp_path, instances, ALLOWED_OPTIONS=DEV_OPTIONS, INSTANCE_WAIT_TIMEOUT=20)
        server = launch(env, token_for())
        # Both are free: the one with the model loaded is chosen, though listed second.
        held = Reader(server.url, body(token_for(), delay=0.05, repeat=200))
        held.next()
        assert [r["path"] for r in warm.requests() if r["path"] == "/api/chat"] == ["/api/chat"]
        # The warm one is busy: the cold one serves at once rather than have it wait.
        response = requests.post(f"{server.url}/chat", json=body(token_for(), "cold"), timeout=10)
        assert response.status_code == 200
        assert served_order(cold) == ["cold"]
        held.close()
        assert wait_until(lambda: warm.stats()["active_streams"] == 0)


# --- the development server (threads, no gevent) ----------------------------------------------


def test_stop_and_queue_updates_on_the_threaded_server(make_live, token_for):
    live = make_live(ALLOWED_OPTIONS=DEV_OPTIONS)
    streaming, waiting = token_for(), token_for()
    reader = Reader(live.url, body(streaming, delay=0.05, repeat=200))
    first = reader.next()["msg"]
    assert stop(live.url, streaming) == (200, {"status": "ok", "msg": "stopped"})
    lines = reader.rest()
    assert lines[-1]["stopped"] is True
    assert lines[-1]["fullMsg"] == first + "".join(line["msg"] for line in lines[:-1])
    assert stop(live.url, streaming)[0] == 404
    bad = requests.post(f"{live.url}/chat", json=body(waiting, queue_updates="yes"), timeout=10)
    assert bad.status_code == 400 and "queue_updates" in bad.json()["msg"]
    assert requests.post(f"{live.url}/stop", json={"token": "nope"}, timeout=10).status_code == 401
