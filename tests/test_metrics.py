"""GET /metrics: one process (the dev server's way), then real gunicorn with several workers."""

import http.client
import json
import os
import re
import signal
import threading

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from chatsite.dev.instance import MODELS
from tests.helpers import Stream, chat_body, echo_body, site_env, slow_body, stream
from tests.servers import ROOT, Nginx, free_port, need_service, nginx_binary, wait_until
from tests.test_production import nginx_site, sessions_on_workers

NDJSON = "application/x-ndjson"


@pytest.fixture
def database_url(tmp_path):
    """SQLite only (or the file named by the test): the counting, not the database, is tested."""
    return f"sqlite:///{tmp_path / 'chatsite.db'}"


def scrape(url, session=None):
    """{(name, (label pairs...)): value} of every sample /metrics shows."""
    response = (session or requests).get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"two samples for {key}: not summed over workers"
            samples[key] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


PER_MODEL = [
    ("chatsite_streams_active", {}),
    ("chatsite_queue_waiting", {}),
    ("chatsite_stream_chunks_total", {"kind": "thinking"}),
    ("chatsite_stream_chunks_total", {"kind": "content"}),
]
UNLABELLED = [
    "chatsite_first_chunk_seconds_count",
    "chatsite_queue_wait_seconds_count",
    "chatsite_stream_seconds_count",
]


def model_series(samples, model):
    """{(name, other labels): value} of the model's per-model series; absent ones left out."""
    shown = {}
    for name, labels in PER_MODEL:
        key = (name, tuple(sorted({"model": model, **labels}.items())))
        if key in samples:
            shown[(name, tuple(labels.items()))] = samples[key]
    return shown


def all_zero(samples, model):
    """True if every per-model series of `model` is there, at 0."""
    return model_series(samples, model) == {
        (name, tuple(labels.items())): 0.0 for name, labels in PER_MODEL
    }


def instance_series(samples, url):
    return (
        samples.get(("chatsite_instance_up", (("instance", url),))),
        samples.get(("chatsite_instance_slots_in_use", (("instance", url),))),
    )


def test_one_process_counts_requests_streams_and_chunks(live, upstream, token_for):
    before = scrape(live.url)
    response = requests.post(f"{live.url}/chat", json=echo_body(token_for()), timeout=10)
    pieces = [json.loads(line) for line in response.text.splitlines()][:-1]
    assert response.headers["Content-Type"] == NDJSON and pieces
    refused = requests.post(f"{live.url}/settings", json={"token": "bad"}, timeout=10)
    assert refused.status_code == 401
    after = scrape(live.url)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("chatsite_requests_total", endpoint="/chat", code="200") == 1
    assert grew("chatsite_requests_total", endpoint="/settings", code="401") == 1
    assert grew("chatsite_stream_chunks_total", model="echo:latest", kind="content") == len(pieces)
    assert grew("chatsite_first_chunk_seconds_count") == 1
    assert grew("chatsite_stream_seconds_count") == 1
    assert grew("chatsite_queue_wait_seconds_count") == 1
    assert value(after, "chatsite_streams_active", model="echo:latest") == 0
    assert value(after, "chatsite_instance_up", instance=upstream.url) == 1
    assert value(after, "chatsite_instance_slots_in_use", instance=upstream.url) == 0
    # Paths that match no route share one label: a scan cannot blow up the series.
    requests.get(f"{live.url}/no/such/path/{os.getpid()}", timeout=10)
    assert grew("chatsite_requests_total", endpoint="other", code="404") == 0
    assert value(scrape(live.url), "chatsite_requests_total", endpoint="other", code="404") >= 1


def test_gunicorn_workers_sum_counters_and_gauges(tmp_path, launch, upstream, token_for):
    """Three workers: every scrape, whichever worker answers it, shows the host's totals."""
    tokens = [token_for() for _ in range(4)]
    instances = [{"url": upstream.url, "max_concurrent": 3}]
    env = site_env(tmp_path, instances, INSTANCE_WAIT_TIMEOUT=10)
    server = launch(env, tokens[0], workers=3)
    spread = sessions_on_workers(server, 3, workers=3)
    # Usually all three; two already show that a scrape sums what other workers counted.
    assert len({pid for _, pid in spread}) >= 2, "the sessions all reached one worker"
    sessions = [session for session, _ in spread]
    try:
        # Four refused requests on each worker (a 401: nothing else in this test makes one).
        for session in sessions:
            for _ in range(4):
                answer = session.post(f"{server.url}/settings", json={"token": "not a jwt"})
                assert answer.status_code == 401

        def refused(session):
            samples = scrape(server.url, session)
            return value(samples, "chatsite_requests_total", endpoint="/settings", code="401")

        # Each worker adds its counts to the host's once a second.
        assert wait_until(lambda: refused(sessions[0]) == 12), refused(sessions[0])
        for session in sessions:  # each scrape is answered by another worker: the same sum
            assert refused(session) == 12

        # One slow stream per worker, then a fourth request waiting for a slot.
        streams = [
            Stream(server.url, slow_body(token), session)
            for token, session in zip(tokens[:3], sessions, strict=True)
        ]
        waiting: list = []
        waiter = threading.Thread(
            target=lambda: waiting.append(stream(server.url, "/chat", echo_body(tokens[3])))
        )
        waiter.start()

        def host_view():
            samples = scrape(server.url)
            return (
                value(samples, "chatsite_streams_active", model="slow:latest"),
                value(samples, "chatsite_queue_waiting", model="echo:latest"),
                value(samples, "chatsite_instance_slots_in_use", instance=upstream.url),
            )

        assert wait_until(lambda: host_view() == (3, 1, 3)), host_view()
        for relaying in streams:
            relaying.close()
        waiter.join(15)
        assert waiting and waiting[0][0].status_code == 200, waiting
        assert wait_until(lambda: host_view() == (0, 0, 0)), host_view()
        samples = scrape(server.url)
        assert value(samples, "chatsite_queue_wait_seconds_count") >= 4
        assert value(samples, "chatsite_queue_wait_seconds_bucket", le="+Inf") >= 4
        assert value(samples, "chatsite_stream_seconds_count") == 4
        assert value(samples, "chatsite_instance_up", instance=upstream.url) == 1
        slow = {"model": "slow:latest", "kind": "content"}
        assert value(samples, "chatsite_stream_chunks_total", **slow) >= 3
    finally:
        for session in sessions:
            session.close()


def test_a_killed_workers_streams_leave_the_gauge(tmp_path, launch, upstream, token_for, user):
    """SIGKILL mid-stream: the worker never counts its stream down; gunicorn's child_exit
    drops its live gauges, and its counters stay in the host's sums."""
    token = token_for(user)
    server = launch(site_env(tmp_path, [{"url": upstream.url, "max_concurrent": 2}]), token)
    relaying = Stream(server.url, slow_body(token))
    samples = scrape(server.url)
    assert value(samples, "chatsite_streams_active", model="slow:latest") == 1
    served = value(samples, "chatsite_requests_total", endpoint="/settings", code="200")
    assert served >= 1  # gunicorn's readiness check
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    relaying.close()
    assert wait_until(lambda: server.worker_pids() and worker not in server.worker_pids(), 10)

    def after_restart():
        try:
            return scrape(server.url)
        except requests.ConnectionError:
            return None

    samples = wait_until(after_restart, timeout=15)
    assert samples is not None, server.log()
    assert value(samples, "chatsite_streams_active", model="slow:latest") == 0
    assert value(samples, "chatsite_requests_total", endpoint="/settings", code="200") == served
    assert value(samples, "chatsite_requests_total", endpoint="/chat", code="200") == 1


def test_nginx_keeps_metrics_internal_and_names_requests(tmp_path, launch, upstream, token_for):
    """deploy/nginx.conf: /metrics and /healthz answer internal addresses only (127.0.0.2 is
    not on its list), and the request id the app logs and echoes is nginx's, not the client's."""
    binary = nginx_binary()
    if binary is None:
        need_service("nginx is not installed")
    token = token_for()
    server = launch(site_env(tmp_path, [upstream.url]), token)
    port = free_port()
    with Nginx(binary, tmp_path / "nginx", nginx_site(server.port, port)) as proxy:
        proxy.start(port)

        def ask(method, path, source, body=None, headers=None):
            connection = http.client.HTTPConnection("127.0.0.1", port, 10, (source, 0))
            try:
                payload = json.dumps(body) if body is not None else None
                connection.request(method, path, payload, headers or {})
                answer = connection.getresponse()
                return answer.status, dict(answer.getheaders()), answer.read()
            finally:
                connection.close()

        status, _, text = ask("GET", "/metrics", "127.0.0.1")
        assert status == 200 and b"chatsite_requests_total" in text
        assert ask("GET", "/metrics", "127.0.0.2")[0] == 403
        assert ask("GET", "/healthz", "127.0.0.2")[0] == 403
        status, headers, _ = ask(
            "POST", "/settings", "127.0.0.2", {"token": token}, {"X-Request-ID": "mine"}
        )
        assert status == 200
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"]), headers


def test_the_dashboard_queries_only_metrics_that_exist(live):
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    text = requests.get(f"{live.url}/metrics", timeout=10).text
    names = set()
    for name, kind in re.findall(r"^# TYPE (\w+) (\w+)$", text, re.MULTILINE):
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        names |= {name + suffix for suffix in suffixes}
    used = {name for expr in exprs for name in re.findall(r"\bchatsite_\w+", expr)}
    assert used and used <= names, used - names
    for expected in ("streams_active", "queue_waiting", "first_chunk", "stream_chunks", "up"):
        assert any(expected in name for name in used), expected


def test_every_series_is_there_from_the_first_scrape(tmp_path, launch, upstream, token_for):
    """Before any traffic, every model of the catalog and every configured instance has its
    series (0: "nobody waits", not "not exported"); thinking is counted apart from the reply;
    a model that leaves the catalog loses its series."""
    down = f"http://127.0.0.1:{free_port()}"
    token = token_for()
    env = site_env(tmp_path, [upstream.url, down], MODELS_CACHE_SECONDS=0.5)
    server = launch(env, token, workers=2)
    samples = scrape(server.url)
    for model in MODELS:
        assert all_zero(samples, model), (model, model_series(samples, model))
    assert instance_series(samples, upstream.url) == (1, 0)
    assert instance_series(samples, down) == (0, 0)
    for name in UNLABELLED:
        assert samples[(name, ())] == 0

    response, lines = stream(server.url, "/chat", chat_body(token, model="thinker"))
    assert response.status_code == 200 and lines[-1]["done"] is True
    thinking = sum(1 for line in lines if line.get("thinking"))
    content = sum(1 for line in lines if line.get("msg"))
    assert thinking and content

    def thinker():
        return model_series(scrape(server.url), "thinker:latest")

    expected = {
        ("chatsite_streams_active", ()): 0.0,
        ("chatsite_queue_waiting", ()): 0.0,
        ("chatsite_stream_chunks_total", (("kind", "thinking"),)): thinking,
        ("chatsite_stream_chunks_total", (("kind", "content"),)): content,
    }
    assert wait_until(lambda: thinker() == expected), thinker()

    # The instance now serves `echo` only: the other models' series go at the next refresh
    # (each worker's own: a scrape answered by one that has not refreshed yet shows them).
    upstream.misbehave(tags={"models": [MODELS["echo:latest"].tag()]})

    def echo_only():
        samples = scrape(server.url)
        others = [model for model in MODELS if model_series(samples, model)]
        return others == ["echo:latest"] and all_zero(samples, "echo:latest")

    assert wait_until(echo_only), model_series(scrape(server.url), "thinker:latest")


def test_two_hosts_on_redis_each_report_their_own(
    tmp_path, launch, upstream, token_for, redis_prefix
):
    """Coordination through Redis: each host's /metrics shows its own streams and counts,
    and the instance's slots as the whole cluster uses them."""
    redis_url, prefix = redis_prefix
    instances = [{"url": upstream.url, "max_concurrent": 2}]
    shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": prefix}
    token = token_for()
    a = launch(site_env(tmp_path / "a", instances, **shared), token)
    b = launch(site_env(tmp_path / "b", instances, **shared), token)
    for host in (a, b):
        samples = scrape(host.url)
        assert all(all_zero(samples, model) for model in MODELS)
        assert instance_series(samples, upstream.url) == (1, 0)

    def view(host):
        samples = scrape(host.url)
        return (
            value(samples, "chatsite_streams_active", model="slow:latest"),
            instance_series(samples, upstream.url)[1],
        )

    relaying = Stream(a.url, slow_body(token))
    try:
        assert wait_until(lambda: view(a) == (1, 1)), view(a)
        assert view(b) == (0, 1)  # B relays nothing; the slot A holds is the cluster's
        assert model_series(scrape(b.url), "slow:latest")  # 0, but there
    finally:
        relaying.close()
    assert wait_until(lambda: view(a) == (0, 0)), view(a)

    def chunks(host):
        samples = scrape(host.url)
        return value(samples, "chatsite_stream_chunks_total", model="slow:latest", kind="content")

    assert wait_until(lambda: chunks(a) >= 1), chunks(a)
    assert all_zero(scrape(b.url), "slow:latest")
