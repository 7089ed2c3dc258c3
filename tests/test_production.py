"""Production set-ups with real servers: gunicorn's gevent workers, Redis, PostgreSQL, nginx.

Every test starts its own gunicorn processes (`tests.servers.Gunicorn`, using gunicorn.conf.py)
over a folder of its own (database, chat folder, lock folder), configured the way an
operator does it: `CHATSITE_*` environment variables. The upstream is the development chat
instance; its `slow` model streams for as long as a test needs.

Redis and PostgreSQL come from CHATSITE_TEST_REDIS_URL / CHATSITE_TEST_DATABASE_URL, nginx
from $PATH or /usr/sbin. A test whose service is missing is skipped, or fails when
CHATSITE_TEST_REQUIRE_SERVICES=1 (CI).
"""

import http.client
import json
import os
import re
import signal
import sqlite3
import threading
import uuid

import redis
import requests
from playhouse.db_url import connect as connect_url

from chatsite.coordination import FileCoordinator
from chatsite.dev.ports import free_port
from tests.helpers import (
    NO_INSTANCE,
    TIMEOUT,
    Stream,
    create_chat,
    echo_body,
    get_chat,
    init_db,
    messages,
    new_user,
    pg_url,
    sessions_on_workers,
    site_env,
    slow_body,
    stream,
    upstream_bodies,
    user_is_free,
)
from tests.servers import ROOT, Nginx, need_service, nginx_binary, wait_until

BUSY = "a request from this user is already being processed"
# The strings of deploy/nginx.conf that the nginx test replaces (documented in that file).
NGINX_UPSTREAM = "server 127.0.0.1:8000;"
NGINX_LISTEN = "listen 80;"


# --- requests -----------------------------------------------------------------------------


def post_all(url, bodies, sessions=None, timeout=10.0):
    """POST every body to `url` at the same moment, one thread (and session) each.

    Returns the responses in order, streams left open (the caller closes them), or the
    exception a request raised.
    """
    results: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(index):
        try:
            barrier.wait(5)
            post = sessions[index].post if sessions else requests.post
            results[index] = post(url, json=bodies[index], stream=True, timeout=timeout)
        except Exception as error:  # reported by the test, not lost in the thread
            results[index] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 10)
    return results


def statuses(responses):
    """The status codes, sorted; any request that raised fails the test here."""
    assert all(isinstance(r, requests.Response) for r in responses), responses
    return sorted(r.status_code for r in responses)


def access_log(server, request):
    """[(worker pid, status)] of the access-log lines for `request` ("POST /chat").

    gunicorn.conf.py's log format puts the process id in brackets on every line.
    """
    pattern = rf'\[(\d+)\].*"{re.escape(request)} HTTP/1\.1" (\d+) '
    return [(int(pid), int(status)) for pid, status in re.findall(pattern, server.log(10**6))]


def health(url):
    """GET /healthz: (status, body)."""
    with requests.get(f"{url}/healthz", timeout=TIMEOUT) as response:
        return response.status_code, response.json()


def close_all(responses):
    for response in responses:
        if isinstance(response, requests.Response):
            response.close()


# --- one host, several workers ------------------------------------------------------------


def test_one_stream_per_user_across_four_workers(tmp_path, launch, upstream, token_for, user):
    """The file-lock coordinator (the default) holds the user's lock for every worker."""
    token = token_for(user)
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 4}])
    server = launch(env, token, workers=4)
    # Twelve connections, three on each worker, then twelve slow /chat at once on them.
    sessions = [session for session, _ in sessions_on_workers(server, 12, workers=4)]
    try:
        responses = post_all(f"{server.url}/chat", [slow_body(token)] * 12, sessions)
        try:
            assert statuses(responses) == [200] + [429] * 11
            busy = [r for r in responses if r.status_code == 429]
            assert all(r.json() == {"status": "error", "msg": BUSY} for r in busy)
            assert all(r.headers["Retry-After"].isdigit() for r in busy)
            assert upstream.stats()["active_streams"] == 1
        finally:
            close_all(responses)
    finally:
        for session in sessions:
            session.close()
    # Workers other than the streaming one said 429 too: the lock is the host's, not the
    # worker's. (The 200 is logged when its stream ends, after the close above.)
    answered = wait_until(lambda: len(access_log(server, "POST /chat")) == 12)
    assert answered, server.log()
    answered = access_log(server, "POST /chat")
    streaming = [pid for pid, status in answered if status == 200]
    assert len(streaming) == 1
    assert {pid for pid, status in answered if status == 429} - set(streaming), answered


def test_instance_slots_across_workers_give_504(tmp_path, launch, upstream, token_for):
    """Eight users, two slots, a 1 s wait: two streams, six 504s while both slots are held.

    The requests come on connections spread over both workers: slots counted per worker
    would let four streams through.
    """
    tokens = [token_for() for _ in range(8)]
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 2}], INSTANCE_WAIT_TIMEOUT=1)
    server = launch(env, tokens[0], workers=2)
    sessions = [session for session, _ in sessions_on_workers(server, 8, workers=2)]
    try:
        responses = post_all(f"{server.url}/chat", [slow_body(t) for t in tokens], sessions)
        try:
            assert statuses(responses) == [200] * 2 + [504] * 6
            assert all(r.json() == NO_INSTANCE for r in responses if r.status_code == 504)
            # The slot holders were still holding: the 504s are the wait running out.
            assert health(server.url)[1]["instances"][0]["slots_in_use"] == 2
            assert upstream.stats()["active_streams"] == 2  # both streams still running
            assert upstream.stats()["completed_streams"] == 0
            assert len(upstream_bodies(upstream)) == 2
        finally:
            close_all(responses)
    finally:
        for session in sessions:
            session.close()
    # Both workers answered: the slots are the host's, not each worker's.
    assert wait_until(lambda: len(access_log(server, "POST /chat")) == 8), server.log()
    assert len({pid for pid, _ in access_log(server, "POST /chat")}) == 2


def test_sigkilled_workers_free_the_users_lock(tmp_path, launch, upstream, token_for, user):
    """A worker killed mid-stream holds nothing: the kernel drops its flocks."""
    token = token_for(user)
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 1}], INSTANCE_WAIT_TIMEOUT=1)
    server = launch(env, token, workers=2)
    opened = Stream(server.url, slow_body(token))
    assert upstream.stats()["active_streams"] == 1
    killed = server.worker_pids()
    assert len(killed) == 2
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # The master reaps them and starts new workers.
    assert wait_until(lambda: not set(killed) & set(server.worker_pids()), timeout=10)
    opened.close()

    # The same user asks again; the request waits for a new worker, then is served. The
    # instance has one slot, so this also shows that the dead worker's slot was freed.
    def ask():
        try:
            return stream(server.url, "/chat", echo_body(token))
        except requests.ConnectionError:
            return None

    answered = wait_until(ask, timeout=15, step=0.1)
    assert answered, server.log()
    response, lines = answered
    assert response.status_code == 200, response.text
    assert lines[-1] == {
        "status": "ok",
        "msg": "",
        "fullMsg": "You said: hello there",
        "done": True,
    }
    assert not set(killed) & set(server.worker_pids())
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1)


# --- upstream read time-outs under gevent -------------------------------------------------


def test_gevent_read_timeout_counts_each_wait_not_the_whole_stream(
    tmp_path, launch, upstream, token_for, user
):
    """Under gevent one watchdog per stream replaces a timer per read (chatsite.llm.client).

    Tokens 0.2 s apart with a 1 s read time-out: the stream lasts longer than the time-out
    and still ends well; then a 3 s gap between tokens ends the stream in band, frees the
    user and closes the upstream request.
    """
    token = token_for(user)
    instances = [{"url": upstream.url, "max_concurrent": 2}]
    server = launch(site_env(tmp_path, instances, UPSTREAM_READ_TIMEOUT=1), token)
    response, lines = stream(server.url, "/chat", slow_body(token, delay=0.2, repeat=2))
    assert response.status_code == 200
    assert len(lines) == 9 and lines[-1]["status"] == "ok" and lines[-1]["done"] is True
    response, lines = stream(server.url, "/chat", slow_body(token, delay=3, repeat=2))
    assert response.status_code == 200
    assert lines[-1] == {"status": "error", "msg": "chat server connection failed", "done": True}
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1)
    response, lines = stream(server.url, "/chat", echo_body(token))
    assert lines[-1]["done"] is True and lines[-1]["status"] == "ok"  # the user is free again


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def largest_body(token: str, count: int = 500, limit: int = 1048576) -> dict:
    """A valid /chat body of `count` messages (MAX_MESSAGES) just under MAX_CONTENT_LENGTH."""
    each = (limit - 4096) // count - len('{"role": "assistant", "content": ""}, ')
    texts = [f"{index} " + "x" * (each - 6) for index in range(count)]
    body = echo_body(token)
    body["messages"] = messages(*texts)
    assert limit - 16384 < len(json.dumps(body)) < limit
    return body


def test_waves_of_the_largest_bodies_do_not_grow_the_worker(tmp_path, launch, upstream, token_for):
    """20 users at once send the largest /chat bodies accepted, wave after wave: after the
    second wave the worker's memory stays where it is (a loose bound: it used to keep about
    25 MiB more with every wave, the request's body held in a reference cycle)."""
    # Half of them wait in line for a slot, holding their bodies meanwhile.
    env = site_env(
        tmp_path, [{"url": upstream.url, "max_concurrent": 10}], INSTANCE_WAIT_TIMEOUT=60
    )
    server = launch(env, token_for())
    (worker,) = server.worker_pids()
    bodies = [largest_body(token_for()) for _ in range(20)]
    after = []
    for _ in range(6):
        responses = post_all(f"{server.url}/chat", bodies, timeout=60)
        assert statuses(responses) == [200] * 20, server.log()
        for response in responses:
            assert json.loads(response.content.splitlines()[-1])["done"] is True
        close_all(responses)
        after.append(rss_mib(worker))
    assert server.worker_pids() == [worker]
    assert max(after[2:]) < after[1] + 40, after


# --- several hosts: Redis and PostgreSQL --------------------------------------------------


def test_two_hosts_share_redis_and_postgresql(
    tmp_path, launch, upstream, token_for, pg_schema, redis_prefix
):
    base, schema = pg_schema
    redis_url, prefix = redis_prefix
    shared = {"CHAT_STORE": "database", "REDIS_URL": redis_url, "REDIS_PREFIX": prefix}
    one_slot = [{"url": upstream.url, "max_concurrent": 1}]
    host_a = site_env(
        tmp_path / "a",
        one_slot,
        database_url=pg_url(base, schema),
        INSTANCE_WAIT_TIMEOUT=1,
        **shared,
    )
    # Host B uses a pool of two connections (psycopg2 made cooperative by gunicorn.conf.py).
    host_b = site_env(
        tmp_path / "b",
        one_slot,
        database_url=pg_url(base, schema, "postgres+pool", max_connections=2),
        init=False,
        INSTANCE_WAIT_TIMEOUT=2,
        **shared,
    )
    first, second = new_user(), new_user()
    token1, token2 = token_for(first), token_for(second)
    a = launch(host_a, token1)
    b = launch(host_b, token1)

    # A stream on host A holds the user's lock and the instance's only slot for both hosts.
    opened = Stream(a.url, slow_body(token1))
    try:
        busy = requests.post(f"{b.url}/chat", json=echo_body(token1), timeout=TIMEOUT)
        assert busy.status_code == 429
        assert busy.json() == {"status": "error", "msg": BUSY}
        # Two other users wait on B for that slot, then get 504. Meanwhile B, whose pool
        # has just two connections, still serves: nobody holds one while waiting.
        waiters = [new_user(), new_user()]
        bodies = [echo_body(token_for(waiter)) for waiter in waiters]
        full: list = []
        waiting = threading.Thread(target=lambda: full.extend(post_all(f"{b.url}/chat", bodies)))
        waiting.start()
        # Each waiter takes its user's lock just before it waits for the slot.
        locks = [f"{prefix}:user:{waiter}" for waiter in waiters]
        raw = redis.Redis.from_url(redis_url)
        try:
            assert wait_until(lambda: raw.exists(*locks) == 2), b.log()
        finally:
            raw.close()
        settings = requests.post(f"{b.url}/settings", json={"token": token_for()}, timeout=TIMEOUT)
        assert settings.status_code == 200
        assert waiting.is_alive() and not full  # answered while both were still waiting
        waiting.join(10)
        assert statuses(full) == [504, 504]
        assert all(r.json() == NO_INSTANCE for r in full)
    finally:
        opened.close()
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)

    # A chat made through A is read and continued through B; A sees the continuation.
    chat_id = create_chat(a.url, token2)
    body = echo_body(token2, "Hello from host A", chatfile=chat_id)
    response, lines = stream(a.url, "/chat", body)
    assert response.status_code == 200 and lines[-1]["done"] is True
    contents = get_chat(b.url, token2, chat_id)
    assert [m["content"] for m in contents] == ["Hello from host A", "You said: Hello from host A"]
    history = [*contents, {"role": "user", "content": "And from host B"}]
    body = {"token": token2, "model": "echo", "messages": history, "chatfile": chat_id}
    response, lines = stream(b.url, "/chat", body)
    assert response.status_code == 200 and lines[-1]["fullMsg"] == "You said: And from host B"
    contents = get_chat(a.url, token2, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant", "user", "assistant"]
    assert contents[-1]["content"] == "You said: And from host B"
    assert "incomplete" not in contents[-1]
    settings = requests.post(f"{a.url}/settings", json={"token": token2}, timeout=TIMEOUT).json()
    assert settings["chat_files"]["files"] == [{"id": chat_id, "name": "Hello from host A"}]
    # The chats live in the database: neither host wrote a chat file.
    assert not list(tmp_path.glob("*/chats/*/*.json"))


def test_a_few_pooled_connections_serve_many_streams(
    tmp_path, launch, upstream, token_for, pg_schema, redis_prefix
):
    """`postgres+pool://...?max_connections=2`: 30 streams at once, each saved to its chat."""
    base, schema = pg_schema
    redis_url, prefix = redis_prefix
    application = f"chatsite-pool-{uuid.uuid4().hex[:8]}"  # finds the pool's connections
    init_db(pg_url(base, schema), tmp_path)
    pooled = pg_url(base, schema, "postgres+pool", max_connections=2, application_name=application)
    env = site_env(
        tmp_path / "pooled",
        [{"url": upstream.url, "max_concurrent": 32}],
        database_url=pooled,
        init=False,
        CHAT_STORE="database",
        REDIS_URL=redis_url,
        REDIS_PREFIX=prefix,
        INSTANCE_WAIT_TIMEOUT=5,
    )
    tokens = [token_for() for _ in range(30)]
    server = launch(env, tokens[0])
    chat_ids = [create_chat(server.url, token) for token in tokens]

    admin = connect_url(base)
    peak = {"connections": 0, "streams": 0}
    done = threading.Event()

    def watch():
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        while not done.wait(0.05):
            (count,) = admin.execute_sql(query, (application,)).fetchone()
            peak["connections"] = max(peak["connections"], count)
            peak["streams"] = max(peak["streams"], upstream.stats()["active_streams"])

    results: list = [None] * 30

    def converse(index):
        try:
            body = slow_body(tokens[index], delay=0.03, repeat=12, chatfile=chat_ids[index])
            results[index] = stream(server.url, "/chat", body)
        except Exception as error:  # reported below
            results[index] = error

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=converse, args=(i,)) for i in range(30)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        done.set()
        watcher.join(5)
        admin.close()
    assert all(isinstance(r, tuple) and r[0].status_code == 200 for r in results), results
    assert all(r[1][-1]["done"] is True for r in results)
    assert 1 <= peak["connections"] <= 2, peak
    assert peak["streams"] >= 10, peak  # the streams really ran side by side
    for token, chat_id, (_, lines) in zip(tokens, chat_ids, results, strict=True):
        contents = get_chat(server.url, token, chat_id)
        assert contents[-1]["content"] == lines[-1]["fullMsg"]
        assert lines[-1]["fullMsg"] == "You said: hello there" * 12
        assert "incomplete" not in contents[-1]


# --- nginx in front -----------------------------------------------------------------------


def nginx_site(upstream_port: int, listen_port: int) -> str:
    """deploy/nginx.conf, pointed at a test gunicorn and listening on a test port.

    The two directives are replaced where they stand at the start of a line (the file's
    comments quote them too), and each must be found exactly once.
    """
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    for directive, replacement in (
        (NGINX_UPSTREAM, f"server 127.0.0.1:{upstream_port};"),
        (NGINX_LISTEN, f"listen 127.0.0.1:{listen_port};"),
    ):
        pattern = re.compile(rf"^(\s*){re.escape(directive)}", re.MULTILINE)
        site, found = pattern.subn(lambda m, r=replacement: m.group(1) + r, site)
        assert found == 1, f"deploy/nginx.conf must have one {directive!r} line"
    return site


def test_nginx_streams_each_line_and_passes_disconnects(
    tmp_path, launch, upstream, token_for, user
):
    binary = nginx_binary()
    if binary is None:
        need_service("nginx is not installed")
    token = token_for(user)
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 4}])
    server = launch(env, token)
    port = free_port()
    with Nginx(binary, tmp_path / "nginx", nginx_site(server.port, port)) as proxy:
        proxy.start(port)
        front = f"http://127.0.0.1:{port}"
        status, body = health(front)  # from 127.0.0.1: allowed
        assert status == 200 and body["status"] == "ok"

        # 100 tokens 20 ms apart: each line arrives while the rest is being generated.
        opened = Stream(front, slow_body(token, delay=0.02, repeat=25))
        assert upstream.stats()["active_streams"] == 1
        assert opened.response.headers["Content-Type"] == "application/x-ndjson"
        rest = [next(opened.lines) for _ in range(50)]
        stats = upstream.stats()  # half of it read while the other half is still to come
        assert stats["active_streams"] == 1 and stats["completed_streams"] == 0
        rest += list(opened.lines)
        assert rest[-1]["done"] is True and rest[-1]["fullMsg"].startswith("You said:")
        assert len(rest) == 100  # 99 more pieces and the last line

        # A client that goes away at nginx: nginx drops gunicorn's connection, gunicorn
        # closes the upstream one, and the user's lock is free again.
        opened = Stream(front, slow_body(token))
        opened.close()
        assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1), proxy.log()
        assert wait_until(lambda: upstream.stats()["active_streams"] == 0)
        assert wait_until(lambda: user_is_free(FileCoordinator(tmp_path / "locks"), user))
        response, lines = stream(front, "/chat", echo_body(token))
        assert response.status_code == 200 and lines[-1]["done"] is True


# --- SQLite: a locked database ---------------------------------------------------------------


def test_a_locked_sqlite_database_never_stops_other_streams(tmp_path, launch, upstream, token_for):
    """Another process holds SQLite's write lock while a reply waits to be saved.

    The wait is a sleep in Python, a gevent switch: the worker's other streams keep
    delivering, and the save goes through once the lock is free. (SQLite's busy_timeout,
    a blocking C sleep, froze every greenlet of the worker for as long as the lock was held.)
    """
    streamer, saver = token_for(), token_for()
    server = launch(site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 4}]), streamer)
    chat_id = create_chat(server.url, saver)  # the saver's record and chat exist already
    flowing = Stream(server.url, slow_body(streamer, delay=0.05, repeat=100))  # 20 s of lines

    outside = sqlite3.connect(tmp_path / "chatsite.db", isolation_level=None, timeout=0)
    outside.execute("BEGIN IMMEDIATE")  # an outside writer takes the write lock
    saved: dict = {}
    try:
        done_before = upstream.stats()["completed_streams"]
        saving = threading.Thread(
            target=lambda: saved.update(
                result=stream(server.url, "/chat", echo_body(saver, chatfile=chat_id))
            )
        )
        saving.start()
        # The saver's reply has been generated: its save now waits for the lock...
        assert wait_until(lambda: upstream.stats()["completed_streams"] > done_before)
        # ...while the other stream of the same worker goes on delivering lines.
        during = [next(flowing.lines) for _ in range(20)]
        assert all(line["status"] == "ok" and line["done"] is False for line in during)
        assert "result" not in saved, saved  # still waiting for the lock, not failed
    finally:
        outside.execute("ROLLBACK")
        outside.close()
    saving.join(30)
    response, lines = saved["result"]
    assert response.status_code == 200
    assert lines[-1] == {
        "status": "ok",
        "msg": "",
        "fullMsg": "You said: hello there",
        "done": True,
    }
    contents = get_chat(server.url, saver, chat_id)
    assert [m["content"] for m in contents] == ["hello there", "You said: hello there"]
    flowing.close()


def test_a_slow_chat_file_fsync_never_stops_other_streams(tmp_path, launch, upstream, token_for):
    """A save waits for a slow disk's fsync while another stream of the worker flows.

    The test hook (CHATSITE_TEST_FSYNC_GATE) makes every chat file fsync block its thread
    until the gate file exists, as a slow disk does. The fsync runs in gevent's thread
    pool: only the save waits. (Run on the event loop, it froze every greenlet.)
    """
    streamer, saver = token_for(), token_for()
    gate = tmp_path / "fsync-gate"
    gate.touch()  # open while the chat is created
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 4}])
    server = launch({**env, "CHATSITE_TEST_FSYNC_GATE": str(gate)}, streamer)
    chat_id = create_chat(server.url, saver)
    gate.unlink()
    flowing = Stream(server.url, slow_body(streamer, delay=0.05, repeat=100))  # 20 s of lines
    saved: dict = {}
    try:
        saving = threading.Thread(
            target=lambda: saved.update(
                result=stream(server.url, "/chat", echo_body(saver, chatfile=chat_id))
            )
        )
        saving.start()
        # The saver's reply is being saved: its fsync is held at the gate...
        assert wait_until(lambda: gate.with_name("fsync-gate.waiting").exists(), timeout=10)
        # ...while the other stream of the same worker goes on delivering lines.
        during = [next(flowing.lines) for _ in range(20)]
        assert all(line["status"] == "ok" and line["done"] is False for line in during)
        assert "result" not in saved, saved  # still waiting for the disk, not failed
    finally:
        gate.touch()
    saving.join(30)
    response, lines = saved["result"]
    assert response.status_code == 200
    assert lines[-1]["status"] == "ok" and lines[-1]["done"] is True
    contents = get_chat(server.url, saver, chat_id)
    assert [m["content"] for m in contents] == ["hello there", "You said: hello there"]
    flowing.close()


# --- request edges: forwarded addresses, chunked bodies -------------------------------------


def access_log_address(server, source: str, forwarded_for: str) -> str:
    """GET /healthz from `source` (a loopback address), claiming to forward for another.

    Returns the client address gunicorn's access log gives that request: what the app
    believed (ProxyFix rewrites REMOTE_ADDR in place).
    """
    marker = f"probe-{uuid.uuid4().hex}"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, source_address=(source, 0))
    try:
        headers = {"X-Forwarded-For": forwarded_for, "User-Agent": marker}
        connection.request("GET", "/healthz", headers=headers)
        connection.getresponse().read()
    finally:
        connection.close()
    found = wait_until(lambda: re.search(rf"gunicorn\.access: (\S+) .*{marker}", server.log(10**6)))
    assert found, server.log()
    return found.group(1)


def test_forwarded_for_counts_only_from_the_configured_proxies(
    tmp_path, launch, upstream, token_for
):
    """By default only nginx on the same host (127.0.0.1, ::1) may name the client."""
    env = site_env(tmp_path / "default", [upstream.url])
    server = launch(env, token_for())
    # A client reaching gunicorn directly (here from 127.0.0.2) cannot pick its address.
    assert access_log_address(server, "127.0.0.2", "203.0.113.9") == "127.0.0.2"
    # nginx, on 127.0.0.1, can: one hop.
    assert access_log_address(server, "127.0.0.1", "198.51.100.1, 203.0.113.9") == "203.0.113.9"
    # The operator names the proxies (a JSON list or comma-separated, networks allowed).
    env = site_env(tmp_path / "wide", [upstream.url], FORWARDED_ALLOW_IPS='["127.0.0.0/8"]')
    server = launch(env, token_for())
    assert access_log_address(server, "127.0.0.2", "203.0.113.9") == "203.0.113.9"


def test_chunked_bodies_past_the_limit_are_413_under_gunicorn(
    tmp_path, launch, upstream, token_for
):
    token = token_for()
    server = launch(site_env(tmp_path, [upstream.url]), token)
    limit = 1024 * 1024
    body = json.dumps({"token": token}).encode()

    def chunked(size):
        data = body + b" " * (size - len(body))  # JSON whitespace up to `size` bytes
        return (data[start : start + 65536] for start in range(0, size, 65536))

    response = requests.post(f"{server.url}/settings", data=chunked(limit), timeout=10)
    assert response.status_code == 200
    for size in (limit + 1, 4 * limit):
        response = requests.post(f"{server.url}/settings", data=chunked(size), timeout=10)
        assert response.status_code == 413, size
        assert response.json() == {"status": "error", "msg": "request body too large"}
        assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- shutdown -----------------------------------------------------------------------------


def test_sigterm_ends_streams_cleanly_and_saves_them(tmp_path, launch, upstream, token_for, user):
    """SIGTERM with a 3 s graceful timeout: a 20 s stream goes on, then ends with an error line."""
    token = token_for(user)
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 4}], GRACEFUL_TIMEOUT=3)
    server = launch(env, token)
    chat_id = create_chat(server.url, token)
    with requests.Session() as session:
        body = slow_body(token, delay=0.05, repeat=100, chatfile=chat_id)  # 400 tokens, 20 s
        opened = Stream(server.url, body, session)
        server.process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "draining: 1 streams running" in server.log(10**6)), server.log()
        after = [next(opened.lines) for _ in range(10)]  # the drain lets the stream go on
        assert all(line["status"] == "ok" and line["done"] is False for line in after), after
        received = [opened.first, *after, *opened.lines]
    last = received[-1]
    assert last["status"] == "error" and last["done"] is True, last
    assert "restarting" in last["msg"]
    assert server.process.wait(10) == 0, server.log()
    # Ended by the worker's drain, before gunicorn's own deadline would have cut it.
    assert "interrupted 1 running streams at shutdown" in server.log(10**6)
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)
    assert upstream.stats()["disconnected_streams"] == 1  # the upstream request was closed

    # Nothing is left locked, and the partial reply was saved: a new server shows both.
    assert user_is_free(FileCoordinator(tmp_path / "locks"), user)
    again = launch(env, token)
    contents = get_chat(again.url, token, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant"]
    assert contents[-1]["incomplete"] is True
    assert contents[-1]["content"] == "".join(line["msg"] for line in received[:-1])
    response, lines = stream(again.url, "/chat", echo_body(token))
    assert response.status_code == 200 and lines[-1]["done"] is True


# --- health -------------------------------------------------------------------------------


def test_healthz_reports_database_and_instances(tmp_path, launch, upstream, token_for):
    instances = [{"url": upstream.url, "max_concurrent": 3}]
    server = launch(site_env(tmp_path / "ok", instances), token_for())
    assert health(server.url) == (
        200,
        {
            "status": "ok",
            "database": True,
            "instances": [
                {"index": 0, "reachable": True, "models": 6, "slots_in_use": 0, "max_concurrent": 3}
            ],
        },
    )

    # The database cannot be opened (its folder does not exist); the instance is fine.
    missing = tmp_path / "no-such-folder" / "chatsite.db"
    env = site_env(tmp_path / "nodb", instances, database_url=f"sqlite:///{missing}", init=False)
    no_database = launch(env, None)
    status, body = health(no_database.url)
    assert status == 503
    assert body["status"] == "error" and body["database"] is False
    assert body["instances"][0]["reachable"] is True
    assert str(tmp_path) not in json.dumps(body)  # no path reaches the client

    # Every chat instance is down (a closed port); the database is fine.
    closed = f"http://127.0.0.1:{free_port()}"
    no_instance = launch(site_env(tmp_path / "noinstance", [closed]), None)
    status, body = health(no_instance.url)
    assert status == 503
    assert body["status"] == "error" and body["database"] is True
    assert body["instances"][0]["reachable"] is False


def test_redis_down_is_a_clean_503(make_app, token_for, upstream):
    """Coordination through a Redis that does not answer: 503, never a traceback."""
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", CHAT_INSTANCES=[upstream.url])
    response = app.test_client().post("/chat", json=echo_body(token_for(), "x"))
    assert response.status_code == 503
    assert response.json == {"status": "error", "msg": "service temporarily unavailable"}


def test_a_recycled_worker_drains_its_streams_and_is_replaced(
    tmp_path, launch, upstream, token_for
):
    """MAX_REQUESTS reached: the worker stops accepting, its stream runs on and is ended
    by the drain before gunicorn's deadline, and a new worker serves the next requests."""
    env = site_env(
        tmp_path,
        [{"url": upstream.url, "max_concurrent": 4}],
        GRACEFUL_TIMEOUT=3,
        MAX_REQUESTS="30",
    )
    token = token_for()
    server = launch(env, token)
    (worker,) = server.worker_pids()
    opened = Stream(server.url, slow_body(token_for(), delay=0.05, repeat=100))  # 20 s
    with requests.Session() as session:  # one connection: the old worker's until it stops
        while "Autorestarting worker" not in server.log(10**6):
            session.post(f"{server.url}/settings", json={"token": token}, timeout=TIMEOUT)
    assert wait_until(lambda: "draining: 1 streams running" in server.log(10**6)), server.log()
    last = list(opened.lines)[-1]
    assert last == {
        "status": "error",
        "msg": "the server is restarting; please retry",
        "done": True,
    }
    assert wait_until(lambda: server.worker_pids() not in ([], [worker]), timeout=20)
    response = requests.post(f"{server.url}/settings", json={"token": token}, timeout=TIMEOUT)
    assert response.status_code == 200
