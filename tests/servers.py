"""Real servers for tests: the app under a threaded WSGI server, or under gunicorn."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from chatsite.dev.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def _gunicorn_quiet_args() -> tuple[str, ...]:
    """gunicorn >= 25.1 opens a control socket in $HOME by default: not for test servers."""
    major, minor = (int(part) for part in version("gunicorn").split(".")[:2])
    return ("--no-control-socket",) if (major, minor) >= (25, 1) else ()


def need_service(reason: str) -> None:
    """Skip a test whose service or binary is missing; fail it instead when CI requires them.

    CI sets CHATSITE_TEST_REQUIRE_SERVICES=1: a missing service is then a broken set-up,
    never a silently skipped test.
    """
    if os.environ.get("CHATSITE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (CHATSITE_TEST_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


class ThreadedServer:
    """The Flask app behind werkzeug's threaded server, as the dev server runs it."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def stop_process(process, sig=signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal a server process, then kill it if it has not exited within `timeout`."""
    if process and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout=5.0, step=0.02):
    """Poll until predicate() is true; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class LoggedProcess:
    """A server process whose output goes to an unnamed temp file (never an unread pipe: a
    full pipe would block it); `with` stops it and drops the file."""

    process: subprocess.Popen | None = None
    log_file = None
    log_limit: int | None = None  # how much of its output's end `log()` gives (None: all)

    def stop(self) -> None:
        raise NotImplementedError

    def log(self, limit: int | None = None) -> str:
        """The end of the output (`limit` characters, else `log_limit`, else all of it)."""
        if self.log_file is None or self.log_file.closed:
            return ""
        limit = limit or self.log_limit
        # pread leaves the offset alone: the process shares it and keeps appending there.
        fd = self.log_file.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - limit) if limit else 0
        return os.pread(fd, size - start, start).decode(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()
        if self.log_file is not None:
            self.log_file.close()


class Gunicorn(LoggedProcess):
    """chatsite under gunicorn with gevent workers, configured by CHATSITE_* variables."""

    log_limit = 3000

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 1,
        extra_args=(),
        port=None,
        python: str = sys.executable,
        root: Path = ROOT,
    ):
        """`python` and `root`: another install's interpreter and checkout (the install test)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.root = root
        self.args = [
            python,
            "-m",
            "gunicorn",
            "-c",
            str(root / "gunicorn.conf.py"),
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{self.port}",
            *_gunicorn_quiet_args(),
            *extra_args,
            "wsgi:app",
        ]
        self.process = None
        self.log_file = None

    def start(self, token: str | None, timeout: float = 20.0):
        """Start gunicorn and wait until it serves `POST /settings` for `token`.

        With no token, until it answers `GET /healthz` at all (even 503: no database needed).
        """
        # Logs go to a file, never to an unread pipe: a full pipe would block the server.
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by __exit__
        self.process = subprocess.Popen(
            self.args, cwd=self.root, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT
        )
        try:
            self.wait_ready(token, timeout)
        except BaseException:
            self.stop(sig=signal.SIGKILL)
            raise
        return self

    def wait_ready(self, token: str | None, timeout: float = 20.0) -> None:
        """Wait until gunicorn serves `POST /settings` (or, with no token, `GET /healthz`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log()}")
            try:
                if token is None:
                    with requests.get(f"{self.url}/healthz", timeout=2) as response:
                        if response.status_code in (200, 503):
                            return
                else:
                    body = {"token": token}
                    with requests.post(f"{self.url}/settings", json=body, timeout=2) as response:
                        if response.ok:
                            return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not become ready: {self.log()}")

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0):
        stop_process(self.process, sig, timeout)


def nginx_binary() -> str | None:
    """The nginx executable, if installed (Debian puts it in /usr/sbin)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


class Nginx:
    """nginx in the foreground with a site config (`http`-level text) under `folder`."""

    def __init__(self, binary: str, folder: Path, site: str):
        self.binary = binary
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "site.conf").write_text(site)
        temp = {
            name: self.folder / f"{name}_temp"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        # Started as root, nginx runs its workers as `nobody`, who cannot write in pytest's
        # private tmp folders: fine while no request body outgrows client_body_buffer_size
        # (16k) and nothing is buffered to disk (proxy_buffering is off).
        (self.folder / "nginx.conf").write_text(
            "worker_processes 1;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "    access_log off;\n"
            + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
            + f"    include {self.folder / 'site.conf'};\n"
            "}\n"
        )
        self.process = None

    def start(self, port: int, timeout: float = 10.0):
        """Run nginx and wait until it accepts connections on `port`."""
        directives = (
            f"daemon off; pid {self.folder / 'nginx.pid'}; error_log {self.folder / 'error.log'};"
        )
        self.process = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.folder),
                "-c",
                str(self.folder / "nginx.conf"),
                "-g",
                directives,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start: {self.log()}")

    def log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, timeout: float = 10.0):
        stop_process(self.process, signal.SIGTERM, timeout)  # fast shutdown: streams are cut

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


class LlamaServer(LoggedProcess):
    """llama-cpp-python's OpenAI-compatible server (`make real-model`) serving one GGUF file.

    One thread, for the whole batch too: llama.cpp's threads wait for each other at every
    step, which crawls on a machine whose cores other processes keep busy.
    """

    def __init__(self, model_file: Path, alias: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"  # the base URL, as OpenAI clients take it
        self.args = [
            sys.executable,
            *("-m", "llama_cpp.server", "--model", str(model_file), "--model_alias", alias),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--n_threads", "1", "--n_threads_batch", "1"),
        ]
        self.process = None
        self.log_file = None

    def start(self, timeout: float = 120.0):
        """Start it and wait until `GET /v1/models` answers (the model is loaded by then)."""
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by __exit__
        self.process = subprocess.Popen(
            self.args, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log()[-3000:]}")
            try:
                with requests.get(f"{self.url}/models", timeout=2) as response:
                    if response.ok:
                        return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not start: {self.log()[-3000:]}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGINT, timeout=15)  # uvicorn stops on SIGINT


class RedisServer:
    """A redis-server of the test's own on a free port, without persistence: killed and
    started again, it comes back empty, as a production Redis without persistence does."""

    def __init__(self, binary: str, folder: Path):
        self.binary = binary
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self, timeout: float = 10.0):
        """Start it (again) on the same port and wait until it answers PING."""
        self.process = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
                *("--save", "", "--appendonly", "no", "--logfile", str(self.folder / "log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: everything it held is gone."""
        stop_process(self.process, signal.SIGKILL, timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.kill()
