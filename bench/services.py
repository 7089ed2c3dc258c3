"""The two servers measured: the fast upstream, and chatsite as deployed under gunicorn.

``start_upstream`` runs ``bench/upstream.py``; ``Chatsite`` runs ``flask init-db`` and then
gunicorn with one gevent worker in a temp directory, knows its worker's pid (whose CPU and RSS
the figures measure), mints its JWTs, restarts it and checks that ``POST /chat`` streams. Its
twins share its database and users: as deployed (``gunicorn.conf.py``'s workers), and with the
upstream configured as an OpenAI API instance (``"api": "openai"``, the URL ending in ``/v1``).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import jwt

from chatsite.dev.ports import free_port
from processes import (
    BENCH,
    PY,
    REPO,
    VENV_BIN,
    BenchError,
    Processes,
    children,
    open_fds,
    read_line,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def start_upstream(procs: Processes) -> int:
    """Start bench/upstream.py on a free port; return the port."""
    proc = procs.start(
        [PY, str(BENCH / "upstream.py"), "--port", "0"],
        tie_to_parent=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = read_line(proc, time.monotonic() + 15, "upstream start")
    if not line.startswith("ready"):
        raise BenchError(f"upstream said {line!r}")
    proc.bench_name = "upstream"  # type: ignore[attr-defined]
    return int(line.split()[1])


def post_json(port: int, path: str, body: Any, timeout: float = 15) -> tuple[int, bytes]:
    """One POST with http.client (set-up and checks, not measurements)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Floor:
    """``bench/floor.py``: the leanest gevent relay, one process, in front of the upstream."""

    def __init__(self, procs: Processes, upstream_port: int) -> None:
        self.procs = procs
        self.upstream_port = upstream_port
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.worker = 0  # its pid: the process whose CPU and RSS the figures measure

    def start(self) -> None:
        up = self.upstream_port
        self.proc = self.procs.start(
            [PY, str(BENCH / "floor.py"), "--port", str(self.port), "--upstream", str(up)],
            tie_to_parent=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = read_line(self.proc, time.monotonic() + 15, "floor start")
        if not line.startswith("ready"):
            raise BenchError(f"floor said {line!r}")
        self.port = int(line.split()[1])
        self.worker = self.proc.pid

    def restart(self) -> None:
        """A fresh process on the same port, so that RSS starts from scratch."""
        self.procs.stop(self.proc)
        self.start()


def instances(upstream_port: int, api: str) -> str:
    """CHAT_INSTANCES: the upstream as an Ollama instance, or as an OpenAI API one."""
    if api == "openai":
        url = f"http://127.0.0.1:{upstream_port}/v1"
        return json.dumps([{"url": url, "max_concurrent": 5000, "api": "openai"}])
    return json.dumps([{"url": f"http://127.0.0.1:{upstream_port}", "max_concurrent": 5000}])


class Chatsite:
    """chatsite under gunicorn with ONE gevent worker (or as deployed), in a temp directory."""

    def __init__(
        self,
        procs: Processes,
        tmpdir: Path,
        upstream_port: int,
        extra_env: dict[str, str] | None = None,
        deployed: bool = False,
        api: str = "ollama",
        source: Path = REPO,
    ) -> None:
        self.procs = procs
        self.source = source  # the checkout whose chatsite, wsgi.py and gunicorn.conf.py run
        self.deployed = deployed  # gunicorn.conf.py's own workers and worker_connections
        self.tmpdir = tmpdir
        self.secret = secrets.token_urlsafe(36)  # 48 characters
        self.port = free_port()
        # gunicorn's log and control socket, named apart for each twin
        self.name = (
            "gunicorn-deployed" if deployed else {"openai": "gunicorn-openai"}.get(api, "gunicorn")
        )
        self.log_path = tmpdir / f"{self.name}.log"
        self.master: subprocess.Popen | None = None
        self.worker = 0
        self.notes: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSITE_")}
        self.env.update(
            {
                "CHATSITE_JWT_SECRET": self.secret,
                "CHATSITE_CHAT_INSTANCES": instances(upstream_port, api),
                "CHATSITE_INSTANCE_WAIT_TIMEOUT": "30",
                "CHATSITE_DATABASE_URL": f"sqlite:///{tmpdir / 'bench.db'}",
                "CHATSITE_CHAT_DIR": str(tmpdir / "chats"),
                "CHATSITE_LOCK_DIR": str(tmpdir / "locks"),
                # Figure 2 asks for up to 2,000,000 tokens per stream (num_predict).
                "CHATSITE_MAX_NUM_PREDICT": "2000000",
            }
        )
        self.env.update(extra_env or {})

    def command(self) -> list[str]:
        args = [str(VENV_BIN / "gunicorn")]
        if (self.source / "gunicorn.conf.py").exists():
            args += ["-c", "gunicorn.conf.py"]
        if not self.deployed:
            args += ["-k", "gevent", "-w", "1", "--worker-connections", "2000"]
        # gunicorn >= 24 opens a control socket in ~/.gunicorn by default, shared with any
        # other gunicorn of this user: keep ours in the temp dir.
        control = self.tmpdir / f"{self.name}.ctl"
        return [*args, "-b", f"127.0.0.1:{self.port}", "--control-socket", str(control), "wsgi:app"]

    def token(self, subject: str | None = None) -> str:
        claims = {"sub": subject or str(uuid.uuid4()), "exp": int(time.time()) + 3600}
        return jwt.encode(claims, self.secret, "HS256")

    def start(self) -> None:
        init = subprocess.run(
            [str(VENV_BIN / "flask"), "--app", "chatsite", "init-db"],
            cwd=self.source,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode:
            raise BenchError(f"flask init-db failed: {(init.stderr or init.stdout)[-2000:]}")
        self.launch()

    def deployed_twin(self) -> Chatsite:
        """chatsite as deployed (``gunicorn -c gunicorn.conf.py``, its default workers) on the
        same database, chats, locks and secret, on another port; not started."""
        twin = Chatsite(self.procs, self.tmpdir, 0, deployed=True)
        twin.secret, twin.env = self.secret, dict(self.env)
        return twin

    def openai_twin(self, upstream_port: int) -> Chatsite:
        """chatsite (one worker) on the same database, chats, locks and secret, relaying the
        upstream's OpenAI API; not started."""
        twin = Chatsite(self.procs, self.tmpdir, upstream_port, api="openai")
        twin.secret = self.secret
        twin.env = {**self.env, "CHATSITE_CHAT_INSTANCES": instances(upstream_port, "openai")}
        return twin

    def baseline_twin(self, source: Path, name: str = "baseline") -> Chatsite:
        """chatsite from the checkout ``source`` (one worker), relaying the same upstream with
        the same secret, but on a database, chats and locks of its own (its code may expect
        another schema): its users are created apart. Not started.

        ``PYTHONPATH`` puts the checkout first, before the virtualenv's editable install of
        this one, for gunicorn, its worker and ``flask init-db`` alike.
        """
        twin = Chatsite(self.procs, self.tmpdir, 0, source=source)
        twin.name = f"gunicorn-{name}"
        twin.log_path = self.tmpdir / f"{twin.name}.log"
        twin.secret = self.secret
        data = self.tmpdir / name
        twin.env = {
            **self.env,
            "PYTHONPATH": str(source),
            "CHATSITE_DATABASE_URL": f"sqlite:///{data / 'bench.db'}",
            "CHATSITE_CHAT_DIR": str(data / "chats"),
            "CHATSITE_LOCK_DIR": str(data / "locks"),
        }
        data.mkdir(exist_ok=True)
        return twin

    def workers(self, settle: float = 1.0, timeout: float = 30) -> list[int]:
        """Every worker pid, once their number has stopped growing for ``settle`` seconds."""
        deadline = time.monotonic() + timeout
        pids, since = children(self.master.pid), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < settle:
            time.sleep(0.1)
            now = children(self.master.pid)
            if len(now) != len(pids):
                pids, since = now, time.monotonic()
        return pids

    def restart(self) -> None:
        """A fresh gunicorn (same port, database and users), so RSS starts from scratch."""
        self.procs.stop(self.master, signal.SIGINT)
        self.launch()

    def launch(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.master = self.procs.start(
            self.command(),
            tie_to_parent=True,
            cwd=self.source,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.master.stop_signal = signal.SIGINT  # type: ignore[attr-defined]  # quick shutdown
        self.wait_ready()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def find_worker(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master.poll() is not None:
                raise BenchError(f"gunicorn exited:\n{self.log_tail()}")
            pids = children(self.master.pid)
            if pids:
                return pids[0]
            time.sleep(0.05)
        raise BenchError("no gunicorn worker appeared")

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll POST /models with a token until 200 (POST /settings if /models is missing)."""
        token = self.token()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.master.poll() is not None:
                raise BenchError(f"gunicorn exited:\n{self.log_tail()}")
            try:
                status, body = post_json(self.port, "/models", {"token": token}, timeout=5)
                if status == 200:
                    break
                if status == 404 and b"models" not in body:
                    status, body = post_json(self.port, "/settings", {"token": token})
                    if status == 200:
                        self.notes.append("POST /models answered 404; readiness via /settings")
                        break
                last = f"HTTP {status} {body[:200]!r}"
            except OSError as error:
                last = repr(error)
            time.sleep(0.1)
        else:
            raise BenchError(f"chatsite not ready after {timeout}s ({last}):\n{self.log_tail()}")
        self.worker = self.find_worker()

    def check_worker(self) -> None:
        """The worker must be the one we measure: gunicorn may have replaced it."""
        pids = children(self.master.pid)
        if self.worker not in pids:
            old = self.worker
            self.worker = self.find_worker()
            self.notes.append(f"gunicorn worker {old} was replaced by {self.worker}")
            raise BenchError(f"gunicorn worker {old} died:\n{self.log_tail()}")

    def settle(self, baseline: int, timeout: float = 15) -> None:
        """Wait until the worker's open descriptors are back near ``baseline``, or steady.

        Pooled upstream connections stay open after a load, so "steady for half a
        second" ends the wait too.
        """
        deadline = time.monotonic() + timeout
        last, steady = -1, 0
        while time.monotonic() < deadline:
            fds = open_fds(self.worker)
            if fds <= baseline + 20 or steady >= 5:
                break
            steady = steady + 1 if fds == last else 0
            last = fds
            time.sleep(0.1)
        time.sleep(0.2)

    def probe_chat(self) -> dict[str, Any]:
        """Does POST /chat stream as the contract says? Checks a 3-token answer."""
        body = {
            "token": self.token(),
            "model": "fast",
            "messages": MESSAGES,
            "options": {"num_predict": 3},
        }
        try:
            status, raw = post_json(self.port, "/chat", body, timeout=30)
        except OSError as error:
            return {"ok": False, "detail": f"POST /chat failed: {error!r}"}
        if status != 200:
            return {"ok": False, "detail": f"POST /chat -> HTTP {status}: {raw[:300]!r}"}
        try:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except ValueError:
            return {"ok": False, "detail": f"POST /chat answered non-NDJSON: {raw[:300]!r}"}
        if not lines or lines[-1].get("done") is not True or lines[-1].get("status") != "ok":
            return {"ok": False, "detail": f"POST /chat stream did not end well: {raw[-300:]!r}"}
        pieces = [line.get("msg", "") for line in lines[:-1]]
        result = {"ok": True, "detail": f"{len(lines)} lines", "token_lines": len(pieces)}
        if lines[-1].get("fullMsg") != "".join(pieces):
            result["detail"] += "; fullMsg is not the concatenation of msg"
        if len(pieces) != 3:
            result["detail"] += f"; asked 3 tokens (num_predict), got {len(pieces)} lines"
        return result
