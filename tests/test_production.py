"""Production set-ups with real servers: gunicorn's gevent workers, Redis, PostgreSQL, nginx.

Every test starts its own gunicorn processes (`tests.servers.Gunicorn`, using gunicorn.conf.py)
over a folder of its own (database, chat folder, lock folder), configured the way an
operator does it: `CHATSITE_*` environment variables. The upstream is the development chat
instance; its `slow` model streams for as long as a test needs.

Redis and PostgreSQL come from CHATSITE_TEST_REDIS_URL / CHATSITE_TEST_DATABASE_URL, nginx
from $PATH or /usr/sbin. A test whose service is missing is skipped, or fails when
CHATSITE_TEST_REQUIRE_SERVICES=1 (CI).
"""

import gc
import json
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from chatsite import create_app
from chatsite.coordination import FileCoordinator
from chatsite.storage.tables import create_tables
from tests.conftest import REDIS_URL, TEST_SECRET, pg_url, service_url
from tests.servers import ROOT, Gunicorn, Nginx, free_port, need_service, nginx_binary, wait_until

BUSY = "a request from this user is already being processed"
NO_INSTANCE = {"status": "error", "msg": "no chat instance available"}
# The strings of deploy/nginx.conf that the nginx test replaces (documented in that file).
NGINX_UPSTREAM = "server 127.0.0.1:8000;"
NGINX_LISTEN = "listen 80;"


# --- set-up -------------------------------------------------------------------------------


def init_db(url: str, folder: Path) -> None:
    """Create the tables, as `flask --app chatsite init-db` does, in this process."""
    create_app(
        {
            "TESTING": True,
            "JWT_SECRET": TEST_SECRET,
            "DATABASE_URL": url,
            "CHAT_DIR": str(folder / "chats"),
            "LOCK_DIR": str(folder / "locks"),
            "CHAT_INSTANCES": [],
        },
        instance_path=str(folder / "instance"),
    )
    create_tables()


def site_env(folder: Path, instances: list, database_url: str | None = None, init=True, **config):
    """The CHATSITE_* variables of one host whose files live in `folder`.

    SQLite in `folder` unless `database_url` is given; the tables are created unless `init`
    is false. Extra settings are given by name (`INSTANCE_WAIT_TIMEOUT=1`): strings as they
    are (gunicorn.conf.py reads some raw), anything else as JSON, which `from_prefixed_env`
    parses.
    """
    folder.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{folder / 'chatsite.db'}"
    if init:
        init_db(url, folder)
    env = {
        "CHATSITE_JWT_SECRET": TEST_SECRET,
        "CHATSITE_DATABASE_URL": url,
        "CHATSITE_CHAT_DIR": str(folder / "chats"),
        "CHATSITE_LOCK_DIR": str(folder / "locks"),
        "CHATSITE_CHAT_INSTANCES": json.dumps(instances),
        "CHATSITE_INSTANCE_WAIT_TIMEOUT": "2",
        # Read by gunicorn.conf.py: a server stopped with streams still open stops quickly.
        "CHATSITE_GRACEFUL_TIMEOUT": "5",
    }
    env.update(
        {
            f"CHATSITE_{name}": value if isinstance(value, str) else json.dumps(value)
            for name, value in config.items()
        }
    )
    return env


@pytest.fixture
def launch(upstream):
    """Start gunicorn servers for this test; every one is stopped when it ends.

    Depends on `upstream` so that the servers stop before that fixture checks that every
    upstream stream has ended.
    """
    servers: list[Gunicorn] = []

    def start(env: dict, token: str | None, workers: int = 1) -> Gunicorn:
        server = Gunicorn(env, workers=workers)
        servers.append(server)
        return server.start(token)

    yield start
    # Responses caught in reference cycles keep their keep-alive connections open, and a
    # gunicorn worker waits for its idle connections (up to `keepalive`) before it exits.
    gc.collect()
    # SIGTERM to all at once: each takes a moment to drain, so stop them side by side.
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def redis_prefix():
    """(url, prefix): the test Redis and a key prefix of this test's own, cleaned up."""
    import redis

    url = service_url("CHATSITE_TEST_REDIS_URL", REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        need_service(f"Redis is unreachable: {type(error).__name__}")
    prefix = f"chatsite-test-{uuid.uuid4().hex[:12]}"
    try:
        yield url, prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


# --- requests -----------------------------------------------------------------------------


def chat_body(token, content="hello there", **extra):
    return {"token": token, "messages": [{"role": "user", "content": content}], **extra}


def echo_body(token, content="hello there", **extra):
    return chat_body(token, content, model="echo", **extra)


def slow_body(token, delay=0.05, repeat=200, **extra):
    """A reply of 4 x `repeat` tokens, `delay` seconds apart (200 x 4 x 0.05 = 40 s)."""
    options = {"dev_token_delay": delay, "dev_repeat": repeat}
    return chat_body(token, model="slow", options=options, **extra)


class Stream:
    """A streamed /chat answer being read; `lines` yields the parsed lines still to come.

    Keep the object while the stream should stay open: dropping the line generator closes
    the connection, as a client going away does.
    """

    def __init__(self, url, body, session=None):
        post = (session or requests).post
        self.response = post(f"{url}/chat", json=body, stream=True, timeout=10)
        assert self.response.status_code == 200, self.response.text
        self.lines = (json.loads(line) for line in self.response.iter_lines() if line)
        self.first = next(self.lines)
        assert self.first["status"] == "ok" and self.first["done"] is False

    def close(self):
        self.response.close()


def chat(url, body):
    """POST /chat and read the whole stream: (status, lines or the JSON error)."""
    response = requests.post(f"{url}/chat", json=body, timeout=10)
    if response.headers.get("Content-Type") != "application/x-ndjson":
        return response.status_code, response.json()
    return response.status_code, [json.loads(line) for line in response.text.splitlines()]


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


def sessions_on_workers(server, count, workers, attempts=60):
    """Open `count` keep-alive sessions spread over the workers: [(session, worker pid)].

    A burst of new connections is accepted by whichever worker wakes first, often all by
    one. A session's connection stays with the worker that accepted it, so the sessions
    are opened one by one (which spreads them) and each is tagged by a first request whose
    access-log line names its worker.
    """
    kept, spare = [], []
    per_worker = -(-count // workers)
    for attempt in range(attempts):
        if len(kept) == count:
            break
        session = requests.Session()
        session.get(f"{server.url}/healthz?conn={attempt}", timeout=10)
        line = re.compile(rf"\[(\d+)\].*\"GET /healthz\?conn={attempt} ")
        found = wait_until(lambda: line.search(server.log(10**6)), timeout=2)  # noqa: B023
        assert found, server.log()
        pid = int(found.group(1))
        if sum(p == pid for _, p in kept) < per_worker:
            kept.append((session, pid))
        else:
            spare.append((session, pid))
    while len(kept) < count and spare:
        kept.append(spare.pop())
    for session, _ in spare:
        session.close()
    return kept


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
    with requests.get(f"{url}/healthz", timeout=10) as response:
        return response.status_code, response.json()


def close_all(responses):
    for response in responses:
        if isinstance(response, requests.Response):
            response.close()


def create_chat(url, token):
    response = requests.post(f"{url}/create-chat", json={"token": token}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["chatId"]


def get_chat(url, token, chat_id):
    body = {"token": token, "chatId": chat_id}
    response = requests.post(f"{url}/get-chat", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["contents"]


def user_is_free(lock_dir: Path, user: str) -> bool:
    """Tell whether no process holds the user's lock (flock: take it and give it back)."""
    lease = FileCoordinator(lock_dir).try_lock_user(user)
    if lease is not None:
        lease.release()
    return lease is not None


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
    """Eight users, two slots, a 1 s wait: two streams, six 504s.

    The requests come on connections spread over both workers: slots counted per worker
    would let four streams through.
    """
    tokens = [token_for() for _ in range(8)]
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 2}], INSTANCE_WAIT_TIMEOUT=1)
    server = launch(env, tokens[0], workers=2)
    sessions = [session for session, _ in sessions_on_workers(server, 8, workers=2)]
    try:
        started = time.monotonic()
        responses = post_all(f"{server.url}/chat", [slow_body(t) for t in tokens], sessions)
        took = time.monotonic() - started
        try:
            assert statuses(responses) == [200] * 2 + [504] * 6
            assert all(r.json() == NO_INSTANCE for r in responses if r.status_code == 504)
            assert 1.0 <= took < 5  # the 504s came after the configured wait, not before
            assert upstream.stats()["active_streams"] == 2  # both streams still running
            assert len([r for r in upstream.requests() if r["path"] == "/api/chat"]) == 2
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
    stream = Stream(server.url, slow_body(token))
    assert upstream.stats()["active_streams"] == 1
    killed = server.worker_pids()
    assert len(killed) == 2
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # The master reaps them and starts new workers.
    assert wait_until(lambda: not set(killed) & set(server.worker_pids()), timeout=10)
    stream.close()
    # The same user asks again; the request waits for a new worker, then is served. The
    # instance has one slot, so this also shows that the dead worker's slot was freed.
    deadline = time.monotonic() + 15
    while True:
        try:
            status, lines = chat(server.url, echo_body(token))
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
    assert status == 200, lines
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
    status, lines = chat(server.url, slow_body(token, delay=0.2, repeat=2))
    assert status == 200
    assert len(lines) == 9 and lines[-1]["status"] == "ok" and lines[-1]["done"] is True
    status, lines = chat(server.url, slow_body(token, delay=3, repeat=2))
    assert status == 200
    assert lines[-1] == {
        "status": "error",
        "msg": "chat server connection failed: read timed out",
        "done": True,
    }
    assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1)
    assert chat(server.url, echo_body(token))[0] == 200  # the user is free again


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
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    token1, token2 = token_for(first), token_for(second)
    a = launch(host_a, token1)
    b = launch(host_b, token1)

    # A stream on host A holds the user's lock and the instance's only slot for both hosts.
    stream = Stream(a.url, slow_body(token1))
    try:
        busy = requests.post(f"{b.url}/chat", json=echo_body(token1), timeout=10)
        assert busy.status_code == 429
        assert busy.json() == {"status": "error", "msg": BUSY}
        # Two other users wait on B for that slot, then get 504. Meanwhile B, whose pool
        # has just two connections, still serves: nobody holds one while waiting.
        started = time.monotonic()
        full: list = []
        bodies = [echo_body(token_for()), echo_body(token_for())]
        waiting = threading.Thread(target=lambda: full.extend(post_all(f"{b.url}/chat", bodies)))
        waiting.start()
        time.sleep(0.3)
        asked = time.monotonic()
        settings = requests.post(f"{b.url}/settings", json={"token": token_for()}, timeout=10)
        assert settings.status_code == 200
        assert time.monotonic() - asked < 1.0
        waiting.join(10)
        assert statuses(full) == [504, 504]
        assert all(r.json() == NO_INSTANCE for r in full)
        assert time.monotonic() - started >= 2.0
    finally:
        stream.close()
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)

    # A chat made through A is read and continued through B; A sees the continuation.
    chat_id = create_chat(a.url, token2)
    status, lines = chat(a.url, echo_body(token2, "Hello from host A", chatfile=chat_id))
    assert status == 200 and lines[-1]["done"] is True
    contents = get_chat(b.url, token2, chat_id)
    assert [m["content"] for m in contents] == ["Hello from host A", "You said: Hello from host A"]
    history = [*contents, {"role": "user", "content": "And from host B"}]
    body = {"token": token2, "model": "echo", "messages": history, "chatfile": chat_id}
    status, lines = chat(b.url, body)
    assert status == 200 and lines[-1]["fullMsg"] == "You said: And from host B"
    contents = get_chat(a.url, token2, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant", "user", "assistant"]
    assert contents[-1]["content"] == "You said: And from host B"
    assert "incomplete" not in contents[-1]
    settings = requests.post(f"{a.url}/settings", json={"token": token2}, timeout=10).json()
    assert settings["chat_files"]["files"] == [{"id": chat_id, "name": "Hello from host A"}]
    # The chats live in the database: neither host wrote a chat file.
    assert not list(tmp_path.glob("*/chats/*/*.json"))


def test_a_few_pooled_connections_serve_many_streams(
    tmp_path, launch, upstream, token_for, pg_schema, redis_prefix
):
    """`postgres+pool://...?max_connections=2`: 30 streams at once, each saved to its chat."""
    from playhouse.db_url import connect as connect_url

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
            results[index] = chat(server.url, body)
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
    assert all(isinstance(r, tuple) and r[0] == 200 for r in results), results
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

        # 100 tokens 20 ms apart: the first line arrives while the rest is being generated.
        stream = Stream(front, slow_body(token, delay=0.02, repeat=25))
        first_at = time.monotonic()
        assert upstream.stats()["active_streams"] == 1
        assert stream.response.headers["Content-Type"] == "application/x-ndjson"
        rest = list(stream.lines)
        assert time.monotonic() - first_at > 1.0  # the stream ended much later
        assert rest[-1]["done"] is True and rest[-1]["fullMsg"].startswith("You said:")
        assert len(rest) == 100  # 99 more pieces and the last line

        # A client that goes away at nginx: nginx drops gunicorn's connection, gunicorn
        # closes the upstream one, and the user's lock is free again.
        stream = Stream(front, slow_body(token))
        stream.close()
        assert wait_until(lambda: upstream.stats()["disconnected_streams"] == 1), proxy.log()
        assert wait_until(lambda: upstream.stats()["active_streams"] == 0)
        assert wait_until(lambda: user_is_free(tmp_path / "locks", user))
        status, lines = chat(front, echo_body(token))
        assert status == 200 and lines[-1]["done"] is True


# --- shutdown -----------------------------------------------------------------------------


def test_sigterm_ends_streams_cleanly_and_saves_them(tmp_path, launch, upstream, token_for, user):
    """SIGTERM with a 3 s graceful timeout: a 20 s stream ends with an error line at ~2.4 s."""
    token = token_for(user)
    env = site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 4}], GRACEFUL_TIMEOUT=3)
    server = launch(env, token)
    chat_id = create_chat(server.url, token)
    with requests.Session() as session:
        body = slow_body(token, delay=0.05, repeat=100, chatfile=chat_id)  # 400 tokens, 20 s
        stream = Stream(server.url, body, session)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        received = [stream.first, *stream.lines]
        took = time.monotonic() - signalled
    last = received[-1]
    assert last["status"] == "error" and last["done"] is True, last
    assert "restarting" in last["msg"]
    assert 1.0 < took < 3.0, took  # drained before gunicorn's own deadline
    assert server.process.wait(10) == 0, server.log()
    assert wait_until(lambda: upstream.stats()["active_streams"] == 0)
    assert upstream.stats()["disconnected_streams"] == 1  # the upstream request was closed

    # Nothing is left locked, and the partial reply was saved: a new server shows both.
    assert user_is_free(tmp_path / "locks", user)
    again = launch(env, token)
    contents = get_chat(again.url, token, chat_id)
    assert [m["role"] for m in contents] == ["user", "assistant"]
    assert contents[-1]["incomplete"] is True
    assert contents[-1]["content"] == "".join(line["msg"] for line in received[:-1])
    status, lines = chat(again.url, echo_body(token))
    assert status == 200 and lines[-1]["done"] is True


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
    from tests.servers import free_port

    app = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", CHAT_INSTANCES=[upstream.url])
    body = {"token": token_for(), "model": "echo", "messages": [{"role": "user", "content": "x"}]}
    response = app.test_client().post("/chat", json=body)
    assert response.status_code == 503
    assert response.json == {"status": "error", "msg": "service temporarily unavailable"}
