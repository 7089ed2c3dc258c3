"""Benchmark driver: what chatsite costs per streamed token, compared with the direct path.

It starts everything it needs (the fast upstream ``bench/upstream.py``, chatsite under gunicorn
with one gevent worker, and ``bench/load.py`` load clients), measures four figures for
chatsite and for the direct path (client straight to the upstream), prints one table with the
ratios, writes ``bench/last-results.json``, and stops every process it started, also on Ctrl-C
or on an error. See ``bench/README.md`` for the definitions.

Usage: ``.venv/bin/python bench/run.py [--quick] [--only N] [--direct-only]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import http.client
import json
import math
import os
import platform
import resource
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV_BIN = REPO / ".venv" / "bin"
RESULTS_FILE = BENCH / "last-results.json"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLOW_RATE = 50  # tokens/s of the slow model (the upstream's default)
MESSAGES = [{"role": "user", "content": "hi"}]
TARGETS = ("chatsite", "direct")
TTFB_TOKENS = 10  # figure 1: tokens per request
READ_BATCH_MS = 1  # figure 2: the load client reads in 1 ms batches (see bench/load.py)


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, a run timed out, ...)."""


@dataclass(frozen=True)
class Plan:
    """Sizes of the runs: the full benchmark or the --quick smoke test."""

    reps: int  # repetitions of every measurement (the table shows the best)
    ttfb_requests: int  # sequential requests for figure 1 (after a few warm-up ones)
    stream_seconds: float  # target duration of one figure-2 run
    concurrencies: tuple[int, ...]  # figure 2
    slow_streams: tuple[int, ...]  # figure 3
    slow_tokens: int  # tokens per slow stream (SLOW_RATE tokens/s)
    rps_seconds: float  # duration of one figure-4 run
    rps_clients: int = 50


FULL = Plan(
    reps=3,
    ttfb_requests=200,
    stream_seconds=3.0,
    concurrencies=(1, 10, 50),
    slow_streams=(200, 1000),
    slow_tokens=150,
    rps_seconds=3.0,
)
QUICK = Plan(
    reps=1,
    ttfb_requests=50,
    stream_seconds=1.0,
    concurrencies=(1, 10, 50),
    slow_streams=(200, 1000),
    slow_tokens=50,
    rps_seconds=1.0,
)


def progress(text: str) -> None:
    """Progress goes to stderr; stdout holds only the final table."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the driver dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Every process the driver starts, each in its own session, so that all are stopped."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(
        self, args: list[str], tie_to_parent: bool = False, **kwargs: Any
    ) -> subprocess.Popen:
        proc = subprocess.Popen(
            args,
            start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None,
            **kwargs,
        )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        """Signal the process group the process leads, then SIGKILL it after ``grace``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # The group may still hold children (gunicorn's worker) even if the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc, getattr(proc, "stop_signal", signal.SIGTERM))


def read_line(proc: subprocess.Popen, deadline: float, what: str) -> str:
    """A line from the process's stdout, or BenchError if it dies or the deadline passes."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{what}: timed out")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise BenchError(f"{what}: process exited (code {proc.poll()})")
            return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    """Child pids of a process: /proc/PID/task/*/children, else a scan of /proc."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(x) for x in file.read().split()]
        return found
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


# --------------------------------------------------------------------------- services


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


class Chatsite:
    """chatsite under gunicorn with ONE gevent worker, in a temp directory."""

    def __init__(
        self,
        procs: Processes,
        tmpdir: Path,
        upstream_port: int,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.procs = procs
        self.tmpdir = tmpdir
        self.secret = secrets.token_urlsafe(36)  # 48 characters
        self.port = free_port()
        self.log_path = tmpdir / "gunicorn.log"
        self.master: subprocess.Popen | None = None
        self.worker = 0
        self.notes: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSITE_")}
        self.env.update(
            {
                "CHATSITE_JWT_SECRET": self.secret,
                "CHATSITE_CHAT_INSTANCES": json.dumps(
                    [{"url": f"http://127.0.0.1:{upstream_port}", "max_concurrent": 5000}]
                ),
                "CHATSITE_INSTANCE_WAIT_TIMEOUT": "30",
                "CHATSITE_DATABASE_URL": f"sqlite:///{tmpdir / 'bench.db'}",
                "CHATSITE_CHAT_DIR": str(tmpdir / "chats"),
                "CHATSITE_LOCK_DIR": str(tmpdir / "locks"),
            }
        )
        self.env.update(extra_env or {})

    def command(self) -> list[str]:
        args = [str(VENV_BIN / "gunicorn")]
        if (REPO / "gunicorn.conf.py").exists():
            args += ["-c", "gunicorn.conf.py"]
        # gunicorn >= 24 opens a control socket in ~/.gunicorn by default, shared with any
        # other gunicorn of this user: keep ours in the temp dir.
        return [
            *args,
            "-k",
            "gevent",
            "-w",
            "1",
            "--worker-connections",
            "2000",
            "-b",
            f"127.0.0.1:{self.port}",
            "--control-socket",
            str(self.tmpdir / "gunicorn.ctl"),
            "wsgi:app",
        ]

    def token(self, subject: str | None = None) -> str:
        claims = {"sub": subject or str(uuid.uuid4()), "exp": int(time.time()) + 3600}
        return jwt.encode(claims, self.secret, "HS256")

    def start(self) -> None:
        init = subprocess.run(
            [str(VENV_BIN / "flask"), "--app", "chatsite", "init-db"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode:
            raise BenchError(f"flask init-db failed: {(init.stderr or init.stdout)[-2000:]}")
        self.launch()

    def restart(self) -> None:
        """A fresh gunicorn (same port, database and users), so RSS starts from scratch."""
        self.procs.stop(self.master, signal.SIGINT)
        self.launch()

    def launch(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.master = self.procs.start(
            self.command(),
            tie_to_parent=True,
            cwd=REPO,
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


# --------------------------------------------------------------------------- load


class Probe:
    """CPU of some processes over a run, and the RSS of one of them sampled every 100 ms."""

    def __init__(self, cpu_pids: dict[str, int], rss_pid: int | None = None) -> None:
        self.cpu_pids = cpu_pids
        self.rss_pid = rss_pid
        self.before: dict[str, float] = {}
        self.result: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                self._peak = max(self._peak, rss_mib(self.rss_pid))

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.cpu_pids.items()}
        self.t_start = time.monotonic()
        if self.rss_pid:
            self.result["rss_before_mib"] = self._peak = rss_mib(self.rss_pid)
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        elapsed = time.monotonic() - self.t_start
        for name, pid in self.cpu_pids.items():
            with contextlib.suppress(OSError):
                self.result[f"cpu_{name}"] = cpu_seconds(pid) - self.before[name]
        self.result["probe_seconds"] = elapsed
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            with contextlib.suppress(OSError):
                self._peak = max(self._peak, rss_mib(self.rss_pid))
            self.result["rss_peak_mib"] = self._peak


@dataclass
class LoadResult:
    """Merged records of the load processes (see bench/load.py for the fields)."""

    records: list[list[Any]]
    errors: int
    samples: list[str]
    cpu: list[float]
    t_go: float
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> list[list[Any]]:
        return [r for r in self.records if r[4] == 200]

    @property
    def elapsed(self) -> float:
        """From the first request sent to the last response ended."""
        if not self.records:
            return float("nan")
        return max(r[2] for r in self.records) - min(r[0] for r in self.records)

    def lines(self) -> int:
        return sum(r[3] for r in self.records)

    def token_lines(self) -> int:
        """Lines that carry a token: all lines minus each stream's final ``done`` line."""
        return sum(r[3] - (1 if r[5] else 0) for r in self.records)


def run_load(
    procs: Processes,
    url: str,
    bodies: list[Any],
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    timeout: float = 60,
    processes: int = 1,
    read_batch_ms: float = 0,
    probe: Probe | None = None,
) -> LoadResult:
    """Run bench/load.py in ``processes`` processes (connections split between them)."""
    requests = requests or concurrency
    if processes > 1 and requests != concurrency:
        raise ValueError("several load processes only for one request per connection")
    processes = max(1, min(processes, concurrency))
    specs = []
    for k in range(processes):
        first, last = concurrency * k // processes, concurrency * (k + 1) // processes
        # One body per connection when split (see bench/load.py for how bodies rotate).
        mine = bodies if processes == 1 else [bodies[i % len(bodies)] for i in range(first, last)]
        specs.append(
            {
                "url": url,
                "bodies": mine,
                "concurrency": last - first,
                "requests": requests if processes == 1 else last - first,
                "duration": duration,
                "timeout": timeout,
                "read_batch_ms": read_batch_ms,
            }
        )
    loaders = []
    try:
        for spec in specs:
            proc = procs.start(
                [PY, str(BENCH / "load.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            loaders.append(proc)
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
        deadline = time.monotonic() + 60
        for proc in loaders:
            if read_line(proc, deadline, "load client start").strip() != "ready":
                raise BenchError("load client did not say ready")
        if probe:
            probe.start()
        for proc in loaders:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        budget = (duration or 0) + timeout * math.ceil(requests / concurrency) + 30
        deadline = time.monotonic() + budget
        outputs = [json.loads(read_line(proc, deadline, "load run")) for proc in loaders]
        if probe:
            probe.stop()
    finally:
        for proc in loaders:
            procs.stop(proc, grace=2)
    return LoadResult(
        records=[r for out in outputs for r in out["records"]],
        errors=sum(out["errors"] for out in outputs),
        samples=[s for out in outputs for s in out["error_samples"]],
        cpu=[out["cpu"] for out in outputs],
        t_go=min(out["t_go"] for out in outputs),
        probe=probe.result if probe else {},
    )


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class Row:
    """One line of the table: a value per target and repetition, reduced to the best."""

    label: str
    unit: str
    best: str  # "min" or "max": which of the repetitions is the better one
    values: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    bad: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    direct_na: bool = False

    def add(self, target: str, value: float, bad: int = 0) -> None:
        """Record one repetition: its value and how many of its requests failed."""
        self.values[target].append(value)
        self.bad[target].append(bad)

    def _best_index(self, target: str) -> int | None:
        """The best repetition among those with the fewest failures.

        A run whose requests failed can look better than it is (a p99 over the survivors),
        so failures rank first.
        """
        indexed = [(v, i) for i, v in enumerate(self.values[target]) if not math.isnan(v)]
        if not indexed:
            return None
        fewest = min(self.bad[target][i] for _, i in indexed)
        indexed = [(v, i) for v, i in indexed if self.bad[target][i] == fewest]
        return (min(indexed) if self.best == "min" else max(indexed))[1]

    def reduced(self, target: str) -> float | None:
        """The best repetition's value."""
        index = self._best_index(target)
        return None if index is None else self.values[target][index]

    def bad_note(self, target: str) -> str:
        """`[N bad]` for the best repetition, and the total when other repetitions failed."""
        index = self._best_index(target)
        total = sum(self.bad[target])
        mine = self.bad[target][index] if index is not None else 0
        if total == mine:
            return f" [{mine} bad]" if mine else ""
        return f" [{mine} bad; {total} in all runs]"


class Bench:
    """Holds the services and the results; one method per figure."""

    def __init__(
        self,
        args: argparse.Namespace,
        plan: Plan,
        procs: Processes,
        upstream_port: int,
        upstream_pid: int,
        chatsite: Chatsite | None,
    ) -> None:
        self.args = args
        self.started = time.monotonic()
        self.budget = float(getattr(args, "budget", 270))
        self.skipped: list[str] = []
        self.plan = plan
        self.procs = procs
        self.upstream_port = upstream_port
        self.upstream_pid = upstream_pid
        self.chatsite = chatsite
        self.chat_ok = False
        self.rows: dict[str, Row] = {}
        self.runs: list[dict[str, Any]] = []
        self.samples: list[str] = []
        self.tokens: list[str] = []
        self.fd_baseline = 0

    # helpers

    def reps(self, figure: str) -> Iterator[int]:
        """Repetitions of a figure: the plan's, but none past the 2nd once over budget."""
        for rep in range(self.plan.reps):
            if rep >= 2 and time.monotonic() - self.started > self.budget:
                self.skipped.append(
                    f"figure {figure}: {self.plan.reps - rep} repetition(s) "
                    f"skipped (time budget {self.budget:.0f} s)"
                )
                return
            yield rep

    def targets(self) -> list[str]:
        return [t for t in TARGETS if t == "direct" or self.chat_ok]

    def row(self, key: str, label: str, unit: str, best: str, direct_na: bool = False) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(label, unit, best, direct_na=direct_na)
        return self.rows[key]

    def url(self, target: str, path: str = "/chat") -> str:
        if target == "direct":
            return f"http://127.0.0.1:{self.upstream_port}/api/chat"
        return f"http://127.0.0.1:{self.chatsite.port}{path}"

    def bodies(self, target: str, model: str, tokens: int, streams: int) -> list[Any]:
        """Request bodies: one per user for chatsite (one stream per user), one for direct."""
        options = {"num_predict": tokens}
        if target == "direct":
            return [{"model": model, "messages": MESSAGES, "options": options, "stream": True}]
        return [
            {"token": token, "model": model, "messages": MESSAGES, "options": options}
            for token in self.tokens[:streams]
        ]

    def probe(self, target: str, rss: bool = False) -> Probe:
        pids = {"upstream": self.upstream_pid}
        if target == "chatsite":
            pids["worker"] = self.chatsite.worker
        return Probe(pids, self.chatsite.worker if rss and target == "chatsite" else None)

    def load(
        self, figure: str, target: str, url: str, bodies: list[Any], concurrency: int, **kwargs: Any
    ) -> LoadResult:
        """Run a load, record its summary, and wait for chatsite to settle afterwards."""
        result = run_load(self.procs, url, bodies, concurrency, **kwargs)
        loaders = len(result.cpu)
        busy = max(result.cpu) / result.elapsed if result.elapsed > 0 else 0.0
        summary = {
            "figure": figure,
            "target": target,
            "concurrency": concurrency,
            "requests": len(result.records),
            "ok": len(result.ok),
            "errors": result.errors,
            "lines": result.lines(),
            "elapsed_s": result.elapsed,
            "load_processes": loaders,
            "load_cpu_s": result.cpu,
            **result.probe,
        }
        summary["load_busy"] = busy
        self.runs.append(summary)
        for sample in result.samples[:3]:
            self.samples.append(f"{figure} {target} c={concurrency}: {sample}")
        if target == "chatsite":
            self.chatsite.check_worker()
            self.chatsite.settle(self.fd_baseline)
        return result

    # set-up

    def prepare_chatsite(self) -> None:
        """Check /chat, mint one token per user and create the users' records up front."""
        status = self.chatsite.probe_chat()
        self.chat_status = status
        self.chat_ok = bool(status["ok"])
        progress(
            f"POST /chat check: {'works' if self.chat_ok else 'NOT WORKING'}: {status['detail']}"
        )
        users = max([*self.plan.slow_streams, *self.plan.concurrencies, self.plan.rps_clients])
        self.tokens = [self.chatsite.token() for _ in range(users)]
        # First requests create the users' rows; do it now so no figure measures it.
        result = run_load(
            self.procs,
            self.url("chatsite", "/settings"),
            [{"token": t} for t in self.tokens],
            50,
            requests=len(self.tokens),
        )
        if len(result.ok) != len(self.tokens):
            raise BenchError(f"creating users via /settings failed: {result.samples[:3]}")
        self.chatsite.settle(10_000)
        self.fd_baseline = open_fds(self.chatsite.worker)

    def fresh_worker(self) -> None:
        """Restart chatsite and warm it up, so that RSS "before" is a clean baseline."""
        self.chatsite.restart()
        self.load(
            "warmup",
            "chatsite",
            self.url("chatsite"),
            self.bodies("chatsite", "fast", 10, 10),
            10,
            requests=50,
        )
        self.load(
            "warmup",
            "chatsite",
            self.url("chatsite"),
            self.bodies("chatsite", "slow", 5, 10),
            10,
            requests=10,
        )
        self.fd_baseline = open_fds(self.chatsite.worker)

    # figure 1

    def figure1(self) -> None:
        """Time to first chunk, 1 stream, sequential requests on one keep-alive connection."""
        count = self.plan.ttfb_requests
        median = self.row("ttfb_p50", "1. first chunk, 1 stream, median", "ms", "min")
        p99 = self.row("ttfb_p99", "1. first chunk, 1 stream, p99", "ms", "min")
        cpu = self.row(
            "ttfb_cpu",
            f"1. worker CPU per request ({TTFB_TOKENS} tokens)",
            "ms",
            "min",
            direct_na=True,
        )
        for rep in self.reps("1"):
            for target in self.targets():
                bodies = self.bodies(target, "fast", TTFB_TOKENS, 1)
                self.load("1-warmup", target, self.url(target), bodies, 1, requests=5)
                result = self.load(
                    "1",
                    target,
                    self.url(target),
                    bodies,
                    1,
                    requests=count,
                    timeout=30,
                    probe=self.probe(target),
                )
                records = result.records
                ttfb = [(r[1] - r[0]) * 1000 for r in records if r[4] == 200 and r[1]]
                bad = sum(1 for r in records if not r[5])
                median.add(target, statistics.median(ttfb) if ttfb else math.nan, bad)
                p99.add(target, percentile(ttfb, 99), bad)
                if target == "chatsite":
                    cpu.add(target, result.probe["cpu_worker"] / len(records) * 1000)
                progress(
                    f"fig 1 rep {rep + 1} {target}: median {median.values[target][-1]:.2f}"
                    f" ms, p99 {p99.values[target][-1]:.2f} ms ({bad} bad)"
                )

    # figure 2

    def calibrate(self, target: str) -> float:
        """Chunks/s of one stream, to size the figure-2 runs to ~stream_seconds."""
        tokens = 3000 if target == "chatsite" else 300_000
        result = self.load(
            "2-calibrate",
            target,
            self.url(target),
            self.bodies(target, "fast", tokens, 1),
            1,
            timeout=60,
            read_batch_ms=READ_BATCH_MS,
        )
        return max(1000.0, result.lines() / max(result.elapsed, 1e-3))

    def figure2(self) -> None:
        """Chunks/s of the fast model at 1, 10, 50 streams, and the worker's CPU per chunk."""
        rates = {target: self.calibrate(target) for target in self.targets()}
        for rep in self.reps("2"):
            for streams in self.plan.concurrencies:
                rate = self.row(
                    f"rate_{streams}", f"2. chunks/s, fast, {streams} stream(s)", "/s", "max"
                )
                cpu = self.row(
                    f"cpu_{streams}",
                    f"2. worker CPU per chunk, {streams} stream(s)",
                    "us",
                    "min",
                    direct_na=True,
                )
                for target in self.targets():
                    tokens = int(rates[target] * self.plan.stream_seconds / streams)
                    tokens = max(200, min(tokens, 2_000_000))
                    result = self.load(
                        "2",
                        target,
                        self.url(target),
                        self.bodies(target, "fast", tokens, streams),
                        streams,
                        timeout=120,
                        read_batch_ms=READ_BATCH_MS,
                        probe=self.probe(target),
                        processes=2 if streams >= 10 else 1,
                    )
                    bad = sum(1 for r in result.records if not r[5])
                    chunks = result.lines()
                    rate.add(target, chunks / result.elapsed, bad)
                    if target == "chatsite" and chunks:
                        cpu.add(target, result.probe["cpu_worker"] / chunks * 1e6)
                    progress(
                        f"fig 2 rep {rep + 1} {target} {streams} streams x {tokens} tokens: "
                        f"{rate.values[target][-1]:,.0f} chunks/s ({bad} bad)"
                    )

    # figure 3

    def figure3(self) -> None:
        """Slow model (50 tokens/s) at 200 and 1,000 streams: share of the ideal rate."""
        tokens = self.plan.slow_tokens
        for rep in self.reps("3"):
            for streams in self.plan.slow_streams:
                agg = self.row(
                    f"slow_agg_{streams}",
                    f"3. slow {streams} streams: share of ideal, aggregate",
                    "%",
                    "max",
                )
                each = self.row(
                    f"slow_each_{streams}",
                    f"3. slow {streams} streams: share of ideal, per-stream mean",
                    "%",
                    "max",
                )
                ttfb = self.row(
                    f"slow_ttfb_{streams}",
                    f"3. slow {streams} streams: first chunk p99",
                    "ms",
                    "min",
                )
                rss0 = self.row(
                    f"rss_before_{streams}",
                    f"3. slow {streams} streams: worker RSS before",
                    "MiB",
                    "max",
                    direct_na=True,
                )
                rss1 = self.row(
                    f"rss_peak_{streams}",
                    f"3. slow {streams} streams: worker RSS peak",
                    "MiB",
                    "max",
                    direct_na=True,
                )
                for target in self.targets():
                    if target == "chatsite":
                        self.fresh_worker()
                    result = self.load(
                        "3",
                        target,
                        self.url(target),
                        self.bodies(target, "slow", tokens, streams),
                        streams,
                        timeout=60,
                        processes=2 if streams >= 500 else 1,
                        probe=self.probe(target, rss=True),
                    )
                    bad = sum(1 for r in result.records if not r[5])
                    ideal = streams * SLOW_RATE
                    agg.add(target, 100 * result.token_lines() / result.elapsed / ideal, bad)
                    shares = [
                        (r[3] - (1 if r[5] else 0)) / max(r[2] - r[0], 1e-6) / SLOW_RATE
                        for r in result.records
                    ]
                    each.add(target, 100 * statistics.fmean(shares), bad)
                    firsts = [(r[1] - r[0]) * 1000 for r in result.records if r[1]]
                    ttfb.add(target, percentile(firsts, 99), bad)
                    if target == "chatsite":
                        rss0.add(target, result.probe["rss_before_mib"])
                        rss1.add(target, result.probe["rss_peak_mib"])
                    progress(
                        f"fig 3 rep {rep + 1} {target} {streams} streams: aggregate "
                        f"{agg.values[target][-1]:.1f}%, per-stream "
                        f"{each.values[target][-1]:.1f}%, {result.elapsed:.2f} s "
                        f"({bad} bad)"
                    )

    # figure 4

    def figure4(self) -> None:
        """/settings and /get-chat requests/s with 50 keep-alive clients (SQLite)."""
        clients = self.plan.rps_clients
        tokens = self.tokens[:clients]
        chats = []
        for token in tokens:
            status, raw = post_json(self.chatsite.port, "/create-chat", {"token": token})
            if status != 200:
                raise BenchError(f"/create-chat -> HTTP {status}: {raw[:200]!r}")
            chat_id = json.loads(raw)["chatId"]
            chats.append(chat_id)
            if self.chat_ok:  # give the chat a user message and a reply to read back
                post_json(
                    self.chatsite.port,
                    "/chat",
                    {
                        "token": token,
                        "model": "fast",
                        "messages": MESSAGES,
                        "chatfile": chat_id,
                        "options": {"num_predict": 20},
                    },
                    timeout=30,
                )
        endpoints = {
            "/settings": [{"token": t} for t in tokens],
            "/get-chat": [{"token": t, "chatId": c} for t, c in zip(tokens, chats, strict=True)],
        }
        for rep in self.reps("4"):
            for path, bodies in endpoints.items():
                row = self.row(
                    f"rps_{path}",
                    f"4. {path} req/s, {clients} clients",
                    "/s",
                    "max",
                    direct_na=True,
                )
                cpu = self.row(
                    f"rps_cpu_{path}",
                    f"4. {path} worker CPU per request",
                    "ms",
                    "min",
                    direct_na=True,
                )
                result = self.load(
                    "4",
                    "chatsite",
                    self.url("chatsite", path),
                    bodies,
                    clients,
                    duration=self.plan.rps_seconds,
                    timeout=30,
                    probe=self.probe("chatsite"),
                )
                bad = len(result.records) - len(result.ok)
                row.add("chatsite", len(result.ok) / result.elapsed, bad)
                if result.records:
                    cpu.add("chatsite", result.probe["cpu_worker"] / len(result.records) * 1000)
                progress(
                    f"fig 4 rep {rep + 1} {path}: {row.values['chatsite'][-1]:,.0f} req/s "
                    f"({bad} bad)"
                )


# --------------------------------------------------------------------------- report


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "us":
        return f"{value:.1f} us"
    return f"{value:.1f} {unit}"


def table(bench: Bench, notes: Iterable[str]) -> str:
    """The results table (best of the repetitions) and the environment line."""
    lines = []
    header = ("figure", "chatsite", "direct", "ratio")
    body = []
    for row in bench.rows.values():
        ours, direct = row.reduced("chatsite"), row.reduced("direct")
        cells = [fmt(ours, row.unit), "N/A" if row.direct_na else fmt(direct, row.unit)]
        for i, target in enumerate(TARGETS):
            cells[i] += row.bad_note(target)
        ratio = "N/A"
        if not row.direct_na and ours is not None and direct:
            ratio = f"{ours / direct:.3f}"
        body.append((row.label, *cells, ratio))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]

    def fmt_row(r: tuple[str, ...]) -> str:
        return (
            f"{r[0]:<{widths[0]}} | {r[1]:>{widths[1]}} | {r[2]:>{widths[2]}} | {r[3]:>{widths[3]}}"
        )

    lines.append(fmt_row(header))
    lines.append("-+-".join("-" * w for w in widths))
    lines += [fmt_row(r) for r in body]
    lines.append("")
    lines.append(
        f"best of up to {bench.plan.reps} run(s) each, among those with the fewest "
        f"failures (lowest latency/CPU, highest rate/share/RSS); "
        f"ratio = chatsite / direct"
    )
    lines.append(
        "chunks/s = NDJSON lines received / (last response end - first request sent); "
        "CPU per chunk = worker utime+stime / lines"
    )
    lines.append(
        f"share of ideal (aggregate) = token lines / (last end - first request) / "
        f"(streams x {SLOW_RATE}/s); per-stream mean = mean over streams of "
        f"token lines / (own end - own start) / {SLOW_RATE}/s"
    )
    lines += list(notes)
    lines.append(
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  "
        f"nproc={os.cpu_count()}  python {platform.python_version()} "
        f"({platform.python_implementation()})  {platform.platform()}"
    )
    return "\n".join(lines)


def busy_warnings(runs: list[dict[str, Any]]) -> list[str]:
    """One line per kind of run in which a load client was over 90 % busy."""
    worst: dict[tuple[str, str, int], float] = {}
    for run in runs:
        if run.get("load_busy", 0) > 0.9:
            key = (run["figure"], run["target"], run["concurrency"])
            worst[key] = max(worst.get(key, 0), run["load_busy"])
    return [
        f"warning: figure {fig} {target} {streams} stream(s): a load client was up to "
        f"{busy:.0%} busy, so it may be what limits this figure"
        for (fig, target, streams), busy in worst.items()
    ]


def write_json(bench: Bench, args: argparse.Namespace, notes: list[str], seconds: float) -> None:
    data = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": sys.argv[1:],
        "plan": bench.plan.__dict__,
        "seconds": round(seconds, 1),
        "chat_status": getattr(bench, "chat_status", None),
        "notes": notes,
        "table": {
            key: {
                "label": row.label,
                "unit": row.unit,
                "best": row.best,
                "chatsite": row.reduced("chatsite"),
                "direct": None if row.direct_na else row.reduced("direct"),
                "values": row.values,
                "bad": row.bad,
            }
            for key, row in bench.rows.items()
        },
        "runs": bench.runs,
        "error_samples": bench.samples[:50],
    }
    RESULTS_FILE.write_text(json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (~1 min)")
    parser.add_argument("--only", type=int, choices=(1, 2, 3, 4), help="run one figure")
    parser.add_argument(
        "--direct-only",
        action="store_true",
        help="do not start chatsite; measure the direct path only",
    )
    parser.add_argument("--reps", type=int, help="repetitions (default 2, --quick 1)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir and logs")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="CHATSITE_NAME=VALUE",
        help="extra chatsite setting for an experiment (repeatable)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=270,
        help="seconds after which repetitions beyond the 2nd are skipped",
    )
    args = parser.parse_args(argv)
    for item in args.env:
        if not item.startswith("CHATSITE_") or "=" not in item:
            parser.error(f"--env wants CHATSITE_NAME=VALUE, got {item!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    figures: list[int] = [args.only] if args.only else [1, 2, 3, 4]
    if args.direct_only and 4 in figures:
        figures.remove(4)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    tmpdir = Path(tempfile.mkdtemp(prefix="chatsite-bench-"))
    procs = Processes()
    chatsite = None
    notes: list[str] = []
    code = 0
    try:
        upstream_port = start_upstream(procs)
        upstream_pid = procs.started[-1].pid
        progress(f"upstream on 127.0.0.1:{upstream_port}")
        if not args.direct_only:
            extra = dict(item.split("=", 1) for item in args.env)
            chatsite = Chatsite(procs, tmpdir, upstream_port, extra)
            notes += [f"extra setting: {key}={value}" for key, value in extra.items()]
            chatsite.start()
            progress(f"chatsite on 127.0.0.1:{chatsite.port} (worker pid {chatsite.worker})")
        bench = Bench(args, plan, procs, upstream_port, upstream_pid, chatsite)
        if chatsite:
            bench.prepare_chatsite()
            if not bench.chat_ok:
                notes.append(
                    f"chatsite /chat not working, streaming figures are direct only: "
                    f"{bench.chat_status['detail']}"
                )
        runners: dict[int, Callable[[], None]] = {
            1: bench.figure1,
            2: bench.figure2,
            3: bench.figure3,
            4: bench.figure4,
        }
        try:
            for number in figures:
                runners[number]()
        except BenchError as error:
            notes.append(f"STOPPED EARLY: {error}")
            code = 1
        notes += bench.skipped
        if chatsite:
            notes += chatsite.notes
        notes += busy_warnings(bench.runs)
        notes += [f"error sample: {s}" for s in dict.fromkeys(bench.samples[:20])][:6]
        seconds = time.monotonic() - started
        notes.append(f"total time {seconds:.0f} s; results in {RESULTS_FILE.relative_to(REPO)}")
        write_json(bench, args, notes, seconds)
        sys.stdout.write(table(bench, notes) + "\n")
    except BenchError as error:
        progress(f"FAILED: {error}")
        code = 1
    except KeyboardInterrupt:
        progress("interrupted")
        code = 130
    finally:
        procs.stop_all()
        if args.keep_tmp or code == 1:  # kept after a failure, for gunicorn.log
            progress(f"temp dir kept: {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
