"""The README's production install, as written: a fresh virtualenv, `pip install .`, gunicorn.

The test suite's own virtualenv has the dev extras, which once hid a missing dependency
(gunicorn's gevent worker needs `packaging`, from `gunicorn[gevent]`). This test builds a
virtualenv with nothing but `pip install .` from a copy of the checkout, creates the tables
with its `flask` command, boots `gunicorn -c gunicorn.conf.py wsgi:app` from it and streams
one chat. It takes a while (pip installs every dependency), so it runs once.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import requests

from tests.helpers import TEST_SECRET
from tests.servers import ROOT, Gunicorn

# What a checkout holds that is not part of the package or its deployment.
NOT_SHIPPED = shutil.ignore_patterns(
    ".git", ".venv", "instance", "tests", "bench", "build", "*.egg-info", "__pycache__", ".*cache"
)


def run(args: list[str], cwd, env: dict[str, str], timeout: float) -> str:
    """Run a command of the install; fail the test with its output if it fails."""
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.timeout(600)
def test_pip_install_then_gunicorn_serves_a_chat(tmp_path, upstream, token_for):
    checkout, venv, data = tmp_path / "chatsite", tmp_path / "venv", tmp_path / "data"
    shutil.copytree(ROOT, checkout, ignore=NOT_SHIPPED)
    # Nothing of the test run's own environment may help the install.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean = {k: v for k, v in clean.items() if not k.startswith("CHATSITE_")}

    # 1. Install, as the README says: python3 -m venv .venv && .venv/bin/pip install .
    # To save half a minute, the venv gets no pip of its own: this run's pip installs into
    # it (`--python`), without compiling .pyc files. What gets installed is the same.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, clean, 120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    run([*pip, "install", "--quiet", "--no-compile", "."], checkout, clean, 540)

    # 2. Configure with CHATSITE_* variables and create the tables with `flask init-db`.
    env = {
        **clean,
        "CHATSITE_JWT_SECRET": TEST_SECRET,
        "CHATSITE_DATABASE_URL": f"sqlite:///{data / 'chatsite.db'}",
        "CHATSITE_CHAT_DIR": str(data / "chats"),
        "CHATSITE_LOCK_DIR": str(data / "locks"),
        "CHATSITE_CHAT_INSTANCES": json.dumps([upstream.url]),
        "CHATSITE_WORKERS": "1",
        "CHATSITE_GRACEFUL_TIMEOUT": "5",
    }
    data.mkdir()
    output = run([str(venv / "bin" / "flask"), "--app", "chatsite", "init-db"], checkout, env, 60)
    assert "database ready" in output

    # 3. gunicorn -c gunicorn.conf.py wsgi:app, with the fresh virtualenv's Python.
    user = str(uuid.uuid4())
    token = token_for(user)
    server = Gunicorn(env, python=str(venv / "bin" / "python"), root=checkout)
    with server:
        server.start(token, timeout=60)
        body = {"token": token, "model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        response = requests.post(f"{server.url}/chat", json=body, stream=True, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
        assert lines[-1] == {
            "status": "ok",
            "msg": "",
            "fullMsg": "You said: hi",
            "done": True,
            "seq": len(lines) - 1,
        }
        assert "Using worker: gevent" in server.log(10**6)
