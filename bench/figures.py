"""The four figures: what is run for each, and how the results are reduced to a table row.

``Bench`` holds the services and the results, with one method per figure of
``bench/README.md``; ``Row`` keeps every repetition of one line of the table and picks the best
one; ``Plan`` says how big the runs are (the full benchmark or ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loadgen import LoadResult, Probe, run_load
from processes import BenchError, Processes, open_fds, progress
from services import MESSAGES, Chatsite, Floor, post_json

SLOW_RATE = 50  # tokens/s of the slow model (the upstream's default)
# chatsite relaying the upstream's Ollama API, the same at a baseline revision (--baseline),
# chatsite relaying its OpenAI API (an "openai"
# instance), the gevent floor, and the client talking to the upstream's Ollama API directly.
TARGETS = ("chatsite", "baseline", "openai", "floor", "direct")
CHATSITES = ("chatsite", "baseline", "openai")  # the targets that are chatsite
# the targets that have a worker process to measure
RELAYS = ("chatsite", "baseline", "openai", "floor")
ONLY_OLLAMA = ("baseline", "openai", "floor")  # not in figure 3's deployed row and figure 4
TTFB_TOKENS = 10  # figure 1: tokens per request
READ_BATCH_MS = 1  # figure 2: the load client reads in 1 ms batches (see bench/load.py)


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
    deployed_streams: int = 2000  # figure 3's deployed row (gunicorn.conf.py's workers)


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
    na: tuple[str, ...] = ()  # targets this figure does not exist for

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
        floor: Floor | None = None,
        openai: Chatsite | None = None,
        baseline: Chatsite | None = None,
    ) -> None:
        self.args = args
        self.started = time.monotonic()
        self.budget = float(getattr(args, "budget", 170))
        self.skipped: list[str] = []
        self.plan = plan
        self.procs = procs
        self.upstream_port = upstream_port
        self.upstream_pid = upstream_pid
        self.chatsite = chatsite
        self.floor = floor
        self.openai = openai  # chatsite with the upstream as an OpenAI API instance
        self.chat_ok = False
        self.openai_ok = False
        self.baseline = baseline  # chatsite at another git revision (--baseline)
        self.baseline_ok = False
        self.rows: dict[str, Row] = {}
        self.runs: list[dict[str, Any]] = []
        self.samples: list[str] = []
        self.tokens: list[str] = []
        self.fd_baseline = {"chatsite": 0, "baseline": 0, "openai": 0}

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
        present = {
            "chatsite": self.chat_ok,
            "baseline": self.baseline_ok,
            "openai": self.openai_ok,
            "floor": self.floor is not None,
            "direct": True,
        }
        return [t for t in TARGETS if present[t]]

    def server(self, target: str) -> Chatsite:
        """The chatsite of a target: relaying the upstream's Ollama API, or its OpenAI API."""
        return {"openai": self.openai, "baseline": self.baseline}.get(target, self.chatsite)

    def row(self, key: str, label: str, unit: str, best: str, na: tuple[str, ...] = ()) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(label, unit, best, na=na)
        return self.rows[key]

    def url(self, target: str, path: str = "/chat") -> str:
        if target == "direct":
            return f"http://127.0.0.1:{self.upstream_port}/api/chat"
        if target == "floor":
            return f"http://127.0.0.1:{self.floor.port}{path}"
        return f"http://127.0.0.1:{self.server(target).port}{path}"

    def bodies(self, target: str, model: str, tokens: int, streams: int) -> list[Any]:
        """Request bodies: one per user for chatsite (one stream per user), one for direct."""
        options = {"num_predict": tokens}
        if target == "direct":
            return [{"model": model, "messages": MESSAGES, "options": options, "stream": True}]
        if not self.tokens:  # the floor without chatsite: it ignores the token
            return [{"token": "-", "model": model, "messages": MESSAGES, "options": options}]
        return [
            {"token": token, "model": model, "messages": MESSAGES, "options": options}
            for token in self.tokens[:streams]
        ]

    def probe(self, target: str, rss: bool = False) -> Probe:
        pids = {"upstream": self.upstream_pid}
        worker = {
            "chatsite": self.chatsite,
            "baseline": self.baseline,
            "openai": self.openai,
            "floor": self.floor,
        }.get(target)
        if worker is not None:
            pids["worker"] = worker.worker
        return Probe(pids, worker.worker if rss and worker is not None else None)

    def load(
        self,
        figure: str,
        target: str,
        url: str,
        bodies: list[Any],
        concurrency: int,
        settle: bool = True,
        **kwargs: Any,
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
        if target in CHATSITES and settle:
            self.server(target).check_worker()
            self.server(target).settle(self.fd_baseline[target])
        return result

    # set-up

    def prepare_chatsite(self) -> None:
        """Check /chat, mint one token per user and create the users' records up front.

        The OpenAI chatsite shares the database and the secret: the same users serve both.
        """
        status = self.chatsite.probe_chat()
        self.chat_status = status
        self.chat_ok = bool(status["ok"])
        progress(
            f"POST /chat check: {'works' if self.chat_ok else 'NOT WORKING'}: {status['detail']}"
        )
        if self.openai:
            self.openai_status = self.openai.probe_chat()
            self.openai_ok = bool(self.openai_status["ok"])
            works = "works" if self.openai_ok else "NOT WORKING"
            progress(f"POST /chat check, OpenAI instance: {works}: {self.openai_status['detail']}")
        if self.baseline:
            self.baseline_status = self.baseline.probe_chat()
            self.baseline_ok = bool(self.baseline_status["ok"])
            works = "works" if self.baseline_ok else "NOT WORKING"
            progress(f"POST /chat check, baseline: {works}: {self.baseline_status['detail']}")
        users = max(
            [
                *self.plan.slow_streams,
                *self.plan.concurrencies,
                self.plan.rps_clients,
                self.plan.deployed_streams,
            ]
        )
        self.tokens = [self.chatsite.token() for _ in range(users)]
        # First requests create the users' rows; do it now so no figure measures it. The
        # baseline has a database of its own: its users are created there too.
        for target in ("chatsite", "baseline") if self.baseline_ok else ("chatsite",):
            result = run_load(
                self.procs,
                self.url(target, "/settings"),
                [{"token": t} for t in self.tokens],
                50,
                requests=len(self.tokens),
            )
            if len(result.ok) != len(self.tokens):
                raise BenchError(
                    f"creating users via {target}'s /settings failed: {result.samples[:3]}"
                )
        for target in CHATSITES:
            if self.server(target) is not None:
                self.server(target).settle(10_000)
                self.fd_baseline[target] = open_fds(self.server(target).worker)

    def fresh_worker(self, target: str) -> None:
        """Restart a chatsite and warm it up, so that RSS "before" is a clean baseline."""
        self.server(target).restart()
        self.load(
            "warmup",
            target,
            self.url(target),
            self.bodies(target, "fast", 10, 10),
            10,
            requests=50,
        )
        self.load(
            "warmup",
            target,
            self.url(target),
            self.bodies(target, "slow", 5, 10),
            10,
            requests=10,
        )
        self.fd_baseline[target] = open_fds(self.server(target).worker)

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
            na=("direct",),
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
                if target in RELAYS:
                    cpu.add(target, result.probe["cpu_worker"] / len(records) * 1000)
                progress(
                    f"fig 1 rep {rep + 1} {target}: median {median.values[target][-1]:.2f}"
                    f" ms, p99 {p99.values[target][-1]:.2f} ms ({bad} bad)"
                )

    # figure 2

    def calibrate(self, target: str) -> float:
        """Chunks/s of one stream, to size the figure-2 runs to ~stream_seconds."""
        tokens = {"floor": 30_000, "direct": 300_000}.get(target, 3000)
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
                    na=("direct",),
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
                    if target in RELAYS and chunks:
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
                    na=("direct",),
                )
                rss1 = self.row(
                    f"rss_peak_{streams}",
                    f"3. slow {streams} streams: worker RSS peak",
                    "MiB",
                    "max",
                    na=("direct",),
                )
                cpu = self.row(
                    f"slow_cpu_{streams}",
                    f"3. slow {streams} streams: worker CPU per token",
                    "us",
                    "min",
                    na=("direct",),
                )
                for target in self.targets():
                    if target in CHATSITES:
                        self.fresh_worker(target)
                    elif target == "floor":
                        self.floor.restart()
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
                    if target in RELAYS:
                        rss0.add(target, result.probe["rss_before_mib"])
                        rss1.add(target, result.probe["rss_peak_mib"])
                        token_lines = max(result.token_lines(), 1)
                        cpu.add(target, result.probe["cpu_worker"] / token_lines * 1e6, bad)
                    progress(
                        f"fig 3 rep {rep + 1} {target} {streams} streams: aggregate "
                        f"{agg.values[target][-1]:.1f}%, per-stream "
                        f"{each.values[target][-1]:.1f}%, {result.elapsed:.2f} s "
                        f"({bad} bad)"
                    )
        if self.chat_ok and self.plan.deployed_streams:
            self.deployed()

    def deployed(self) -> None:
        """Slow streams through chatsite as deployed: ``gunicorn -c gunicorn.conf.py`` with its
        default workers (one run, for information: on a small machine the cores bound it)."""
        streams, tokens = self.plan.deployed_streams, self.plan.slow_tokens
        twin = self.chatsite.deployed_twin()
        twin.launch()
        pids = twin.workers()
        label = f"3. deployed ({len(pids)} workers), slow {streams} streams"
        rows = {
            "agg": self.row("dep_agg", f"{label}: share of ideal, aggregate", "%", "max"),
            "ttfb": self.row("dep_ttfb", f"{label}: first chunk p99", "ms", "min"),
            "cpu": self.row(
                "dep_cpu", f"{label}: workers' CPU per token", "us", "min", na=("direct",)
            ),
        }
        for row in rows.values():
            row.na = (*row.na, *ONLY_OLLAMA)
        try:
            for target in ("chatsite", "direct"):
                if target == "chatsite":  # warm every worker up a little
                    run_load(
                        self.procs,
                        f"http://127.0.0.1:{twin.port}/chat",
                        self.bodies("chatsite", "fast", 5, 40),
                        40,
                        requests=80,
                    )
                url = f"http://127.0.0.1:{twin.port}/chat" if target == "chatsite" else None
                probe = Probe({f"worker{i}": pid for i, pid in enumerate(pids)})
                result = self.load(
                    "3-deployed",
                    target,
                    url or self.url(target),
                    self.bodies(target, "slow", tokens, streams),
                    streams,
                    timeout=90,
                    processes=4,
                    probe=probe if target == "chatsite" else None,
                    settle=False,
                )
                bad = sum(1 for r in result.records if not r[5])
                token_lines = result.token_lines()
                share = 100 * token_lines / result.elapsed / (streams * SLOW_RATE)
                rows["agg"].add(target, share, bad)
                firsts = [(r[1] - r[0]) * 1000 for r in result.records if r[1]]
                rows["ttfb"].add(target, percentile(firsts, 99), bad)
                if target == "chatsite":
                    cpu = sum(v for k, v in result.probe.items() if k.startswith("cpu_worker"))
                    rows["cpu"].add(target, cpu / max(token_lines, 1) * 1e6, bad)
                progress(f"fig 3 deployed {target} {streams} streams: {share:.1f}% ({bad} bad)")
        finally:
            self.procs.stop(twin.master, signal.SIGINT)

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
                    na=(*ONLY_OLLAMA, "direct"),
                )
                cpu = self.row(
                    f"rps_cpu_{path}",
                    f"4. {path} worker CPU per request",
                    "ms",
                    "min",
                    na=(*ONLY_OLLAMA, "direct"),
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
