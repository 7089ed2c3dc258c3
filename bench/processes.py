"""The processes the driver starts, and what /proc says about them.

Every process the driver starts (upstream, gunicorn, load clients) leads its own session, so
that stopping its process group also stops its children (gunicorn's worker), and ``Processes``
remembers them all, so that nothing outlives a run, even after Ctrl-C or an error. The /proc
readers give the CPU time, RSS and open descriptors the figures are made of, and gunicorn's
worker pid. This module also holds what every other bench module needs (the paths,
``BenchError``, ``progress``): they all import it, and it imports none of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV_BIN = REPO / ".venv" / "bin"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, a run timed out, ...)."""


def progress(text: str) -> None:
    """Progress goes to stderr; stdout holds only the final table."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


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
