"""Where chatsite's worker spends its time under the bench's load: py-spy on the worker.

Starts the bench's upstream and chatsite (one gevent worker, as ``bench/run.py`` does), creates
the users, then records the worker with py-spy during two loads:

``slow``    1,000 slow streams (50 tokens/s, 150 tokens each), all started at once: the
            per-token path (and the starts, spread over the run);
``starts``  bursts of 200 requests started at once, 1 token each (``--bursts`` of them): the
            request start.

For each it writes ``DIR/NAME.svg`` (a flame graph) and ``DIR/NAME.txt`` (py-spy's collapsed
stacks), and prints a summary: the share of samples by where the worker was (the package of
the innermost frame) and the chatsite functions that hold most samples (inclusive). Only
samples of a running worker count (py-spy leaves out idle ones). py-spy samples without
stopping the worker (``--nonblocking``).

Usage: ``.venv/bin/python bench/profile.py [--out DIR] [--api openai] [--only slow|starts]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import run_load
from processes import VENV_BIN, BenchError, Processes, progress
from services import MESSAGES, Chatsite, start_upstream

RATE = 250  # samples per second
PACKAGES = (
    "chatsite",
    "gevent",
    "gunicorn",
    "urllib3",
    "requests",
    "geventhttpclient",
    "flask",
    "werkzeug",
    "jwt",
    "peewee",
    "marshmallow",
    "prometheus_client",
    "orjson",
)


def where(frame: str) -> str:
    """The package (or stdlib module) a collapsed-stack frame ``func (path:line)`` is in."""
    path = frame.rsplit("(", 1)[-1]
    parts = path.replace("\\", "/").split("/")
    for name in PACKAGES:
        if name in parts or f"{name}.py" in path:
            return name
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    return "stdlib: " + parts[-1].split(":")[0] if parts else "?"


def function(frame: str) -> str:
    """``func (/x/chatsite/api/chat.py:58)`` -> ``func chatsite/api/chat.py``."""
    name, _, path = frame.rpartition(" (")
    return f"{name} chatsite/{path.rsplit('chatsite/', 1)[-1].rsplit(':', 1)[0]}"


def summarize(raw: Path, top: int = 25) -> str:
    """The share of samples by package of the innermost frame, and the heaviest chatsite
    functions (inclusive: each counted once per stack)."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf[where(frames[-1])] += n
        for name in {function(frame) for frame in frames if "chatsite/" in frame}:
            inclusive[name] += n
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    out.append("by package of the innermost frame:")
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in leaf.most_common(14)]
    out.append("chatsite functions, inclusive:")
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


class Recorder:
    """Two py-spy recorders of one pid (a flame graph and collapsed stacks) until stopped."""

    def __init__(
        self, procs: Processes, pid: int, out: Path, name: str, native: bool = False
    ) -> None:
        self.procs = procs
        self.raw = out / f"{name}.txt"
        self.svg = out / f"{name}.svg"
        spy = str(VENV_BIN / "py-spy")
        common = ["record", "--pid", str(pid), "--rate", str(RATE)]
        # C frames too (the garbage collector, gevent's Cython code): py-spy must then stop
        # the worker for each sample, which slows it down.
        common.append("--native" if native else "--nonblocking")
        self.spies = [
            procs.start(
                [spy, *common, "--format", fmt, "-o", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for fmt, path in (("raw", self.raw), ("flamegraph", self.svg))
        ]
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> None:
        for spy in self.spies:
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in self.spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
            self.procs.stop(spy)


def bodies(tokens: list[str], model: str, count: int) -> list[dict]:
    return [
        {"token": t, "model": model, "messages": MESSAGES, "options": {"num_predict": count}}
        for t in tokens
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("bench/profiles"))
    parser.add_argument("--api", choices=("ollama", "openai"), default="ollama")
    parser.add_argument("--only", choices=("slow", "starts"))
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    args = parser.parse_args(argv)
    if not (VENV_BIN / "py-spy").exists():
        progress("py-spy is missing: make venv (it is a dev dependency)")
        return 1
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.out.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix="chatsite-profile-"))
    procs = Processes()
    try:
        upstream = start_upstream(procs)
        site = Chatsite(procs, tmpdir, upstream, api=args.api)
        site.start()
        tokens = [site.token() for _ in range(max(args.streams, 200))]
        url = f"http://127.0.0.1:{site.port}"
        made = run_load(
            procs, f"{url}/settings", [{"token": t} for t in tokens], 50, requests=len(tokens)
        )
        if len(made.ok) != len(tokens):
            raise BenchError(f"creating users failed: {made.samples[:3]}")
        run_load(procs, f"{url}/chat", bodies(tokens[:50], "fast", 10), 50, requests=200)
        summaries = []
        if args.only in (None, "slow"):
            spy = Recorder(
                procs, site.worker, args.out, f"slow-{args.streams}-{args.api}", args.native
            )
            result = run_load(
                procs,
                f"{url}/chat",
                bodies(tokens[: args.streams], "slow", 150),
                args.streams,
                processes=2,
            )
            spy.stop()
            progress(f"slow: {len(result.ok)} of {args.streams} streams answered")
            summaries.append((spy, f"{args.streams} slow streams"))
        if args.only in (None, "starts"):
            spy = Recorder(procs, site.worker, args.out, f"starts-200-{args.api}", args.native)
            for _ in range(args.bursts):
                result = run_load(procs, f"{url}/chat", bodies(tokens[:200], "fast", 1), 200)
                if len(result.ok) != 200:
                    progress(f"starts: {200 - len(result.ok)} failed: {result.samples[:2]}")
            spy.stop()
            summaries.append((spy, f"{args.bursts} bursts of 200 starts"))
        for spy, title in summaries:
            sys.stdout.write(f"== {title} ({spy.svg})\n{summarize(spy.raw)}\n\n")
    except BenchError as error:
        progress(f"FAILED: {error}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
