"""Running a load: ``bench/load.py`` clients started, released together and collected.

``run_load`` splits the connections over one or more load-client processes (one Python client
cannot keep up with the fast upstream alone), starts them all before any sends a request, and
merges their per-request records into a ``LoadResult``. A ``Probe`` measures the servers' CPU
(and one RSS) over exactly that run.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from processes import BENCH, PY, BenchError, Processes, cpu_seconds, read_line, rss_mib


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
