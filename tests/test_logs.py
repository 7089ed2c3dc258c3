"""Logs: plain lines by default; with LOG_FORMAT=json one JSON object per line, and one line
per request with its id, user, endpoint, status, duration, model, instance, wait and tokens."""

import json
import logging
import subprocess
import sys
import uuid

import pytest
import requests

from chatsite.operations.logformat import JsonFormatter
from tests.helpers import TEST_SECRET, echo_body, site_env
from tests.servers import ROOT, wait_until


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: the logs, not the database, are under test."""
    return f"sqlite:///{tmp_path / 'chatsite.db'}"


def request_lines(caplog):
    """The request records caught, as the JSON formatter writes them."""
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == "chatsite.operations.requestlog"
    ]


def test_a_streamed_request_is_logged_once_with_what_it_used(
    make_live, upstream, token_for, user, caplog
):
    live = make_live(LOG_FORMAT="json")
    caplog.set_level(logging.INFO)
    response = requests.post(
        f"{live.url}/chat",
        json=echo_body(token_for(user)),
        headers={"X-Request-ID": "req-42.a"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-42.a"
    pieces = len(response.text.splitlines()) - 1
    (line,) = wait_until(lambda: request_lines(caplog))
    assert line["message"].startswith("POST /chat 200 ")
    assert line["level"] == "INFO" and line["time"].endswith("Z")
    assert {k: line[k] for k in ("request_id", "user_id", "endpoint", "status")} == {
        "request_id": "req-42.a",
        "user_id": user,
        "endpoint": "/chat",
        "status": 200,
    }
    assert (line["model"], line["instance"]) == ("echo:latest", upstream.url)
    assert line["tokens"] == pieces
    assert line["queue_wait"] == 0 and line["complete"] is True
    assert line["duration"] >= 0


def test_other_requests_and_request_ids(make_app, token_for, caplog):
    client = make_app(LOG_FORMAT="json").test_client()
    caplog.set_level(logging.INFO)
    answer = client.post("/settings", json={"token": "nope"}, headers={"X-Request-ID": "a b;<c>"})
    made = answer.headers["X-Request-ID"]
    assert made != "a b;<c>" and len(made) == 32  # a client's odd id is replaced, not logged
    client.post("/settings", json={"token": token_for()})
    refused, served = request_lines(caplog)
    assert refused["request_id"] == made and refused["status"] == 401
    assert "user_id" not in refused and "model" not in refused
    assert served["endpoint"] == "/settings" and served["status"] == 200 and served["user_id"]


def test_plain_format_writes_no_request_lines(make_app, token_for, caplog):
    client = make_app().test_client()
    caplog.set_level(logging.INFO)
    assert client.post("/settings", json={"token": token_for()}).headers["X-Request-ID"]
    assert request_lines(caplog) == []


def test_an_unknown_format_stops_the_app(make_app):
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        make_app(LOG_FORMAT="xml")


def test_the_dev_server_logs_json_lines(tmp_path):
    """No logging configured (as under `flask run`): the app logs JSON to stderr itself."""
    script = (
        "import sys\n"
        "from chatsite import create_app\n"
        "app = create_app(instance_path=sys.argv[1])\n"
        "app.test_client().post('/settings', json={'token': 'bad'})\n"
        "app.logger.warning('a note with %s', 'args')\n"
    )
    env = {
        "CHATSITE_LOG_FORMAT": "json",
        "CHATSITE_JWT_SECRET": TEST_SECRET,
        "CHATSITE_CHAT_INSTANCES": "[]",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "instance")],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["message"] for line in lines][-1] == "a note with args"
    assert any(line.get("endpoint") == "/settings" and line["status"] == 401 for line in lines)


def test_gunicorn_json_logs(tmp_path, launch, upstream, token_for, user):
    """Under gunicorn, the master's lines and the workers' are all JSON objects."""
    token = token_for(user)
    env = site_env(tmp_path, [upstream.url], LOG_FORMAT="json")
    server = launch(env, token, workers=2)
    request_id = uuid.uuid4().hex
    response = requests.post(
        f"{server.url}/chat",
        json=echo_body(token),
        headers={"X-Request-ID": request_id},
        timeout=10,
    )
    assert response.status_code == 200

    def logged():
        return [line for line in parsed(server) if line.get("request_id") == request_id]

    found = wait_until(logged)
    assert len(found) == 1, found
    (line,) = found
    assert line["endpoint"] == "/chat" and line["user_id"] == user
    assert line["model"] == "echo:latest" and line["instance"] == upstream.url
    assert line["tokens"] == len(response.text.splitlines()) - 1
    messages = [line["message"] for line in parsed(server)]
    assert any(message.startswith("Booting worker") for message in messages)
    assert not any('"POST /chat HTTP/1.1"' in message for message in messages)  # no access log


def parsed(server):
    """Every line of gunicorn's output, parsed: each must be a JSON object."""
    return [json.loads(line) for line in server.log(10**6).splitlines() if line]


def test_create_app_twice_keeps_one_log_record_factory(make_app):
    make_app(LOG_FORMAT="json")
    factory = logging.getLogRecordFactory()
    make_app(LOG_FORMAT="json")
    assert logging.getLogRecordFactory() is factory
