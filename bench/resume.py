"""Issue #18's figures: how quickly `/resume` re-attaches, and what detached answers cost.

1. **Re-attaching is quick.** N slow `/chat` streams with a `chatfile` run (each user its own
   chat), and meanwhile a few hundred `POST /resume` calls, each on a new connection, half from
   line 0 (a reloaded page redrawing the answer) and half from the last line already in the
   answer's shared log (a client that lost its connection a moment ago), are timed from
   connecting to their first complete NDJSON line, then closed. Once with gunicorn and 2 gevent
   workers (``gunicorn.conf.py`` with ``CHATSITE_WORKERS=2``: a resume landing on the worker
   that does not produce the answer reads the answer's file; who produced and who served is
   told from ``/proc/locks`` and ``/proc/net/tcp``), once with one worker.
2. **The fast path stays fast.** The worker's CPU per token of N slow `/chat` streams WITH a
   `chatfile` and a client that stays connected, on chatsite at ``--baseline`` (default
   ``26f7955``, main before #18, checked out with ``run.checkout``) and on this tree, back to
   back on the same upstream, alternating, best of the repetitions; the ratio is the figure.

Prints progress on stderr and one table on stdout; exits non-zero only if it could not run.
Usage: ``.venv/bin/python bench/resume.py [--quick] [--baseline REV] [--keep-tmp]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figures import SLOW_RATE, percentile
from loadgen import LoadResult, Probe, run_load
from processes import BenchError, Processes, progress
from run import checkout, clean_up
from services import MESSAGES, Chatsite, post_json, start_upstream

BEFORE_18 = "26f7955"  # main just before "Merge i18-core"
GOAL_P95_MS = 100.0


@dataclass(frozen=True)
class Plan:
    streams: int  # slow chatfile streams running while the resumes are timed
    stream_tokens: int  # their length (SLOW_RATE tokens/s): they outlast the resumes
    resumes: int  # /resume calls per server
    wave: int  # resumes sent at once (then attributed to workers, then closed)
    cpu_streams: int  # streams of one CPU-per-token run
    cpu_tokens: int
    reps: int  # CPU-per-token runs per revision (alternating)


FULL = Plan(
    streams=200,
    stream_tokens=600,
    resumes=300,
    wave=10,
    cpu_streams=200,
    cpu_tokens=150,
    reps=5,
)
QUICK = Plan(
    streams=50,
    stream_tokens=250,
    resumes=60,
    wave=10,
    cpu_streams=50,
    cpu_tokens=100,
    reps=1,
)


# -- the /resume client --


async def _first_line(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read a response head and its body up to the first complete NDJSON line."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" not in head.lower():
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await reader.readexactly(length)
    body = b""
    while b"\n" not in body:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            break
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    return status, body.split(b"\n", 1)[0]


async def resume_once(port: int, body: dict[str, Any]) -> dict[str, Any]:
    """One /resume on a new connection, timed from connecting to its first line.

    The connection stays open (``writer`` in the result) so that the caller can see which
    worker holds it before closing it.
    """
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /resume HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    status, line = await asyncio.wait_for(_first_line(reader), 30)
    ms = (time.monotonic() - started) * 1000
    first = json.loads(line) if line else {}
    return {
        "ms": ms,
        "status": status,
        "seq": first.get("seq"),
        "gap": bool(first.get("gap")),
        "client_port": writer.get_extra_info("sockname")[1],
        "writer": writer,
    }


# -- who is who, from /proc --


def producers(lock_dir: Path) -> dict[str, int]:
    """chat id -> pid of the worker producing its answer (the holder of the file's flock)."""
    holders: dict[int, int] = {}
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[3] == "WRITE":
                holders[int(fields[5].rsplit(":", 1)[1])] = int(fields[4])
    found = {}
    for path in (lock_dir / "answers").glob("*/*.ndjson"):
        with contextlib.suppress(OSError):
            pid = holders.get(path.stat().st_ino)
            if pid:
                found[path.name.removesuffix(".ndjson")] = pid
    return found


def serving_workers(server_port: int, client_ports: list[int], workers: list[int]) -> dict:
    """client port -> pid of the worker holding the server end of that connection."""
    inodes: dict[int, int] = {}  # client port -> inode of the server's socket
    with open("/proc/net/tcp") as tcp:
        next(tcp)
        for line in tcp:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local == server_port and remote in client_ports:
                inodes[remote] = int(fields[9])
    owner: dict[int, int] = {}
    for pid in workers:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owner[int(target[8:-1])] = pid
    return {port: owner.get(inode) for port, inode in inodes.items()}


def logged_lines(lock_dir: Path, chat: str) -> int:
    """Lines of the answer already in its shared file (0 if none yet)."""
    with contextlib.suppress(OSError):
        for path in (lock_dir / "answers").glob(f"*/{chat}.ndjson"):
            return path.read_bytes().count(b"\n")
    return 0


# -- the figures --


class ResumeBench:
    def __init__(self, args: argparse.Namespace, plan: Plan, procs: Processes) -> None:
        self.args, self.plan, self.procs = args, plan, procs
        self.rows: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def chats(self, server: Chatsite, tokens: list[str]) -> list[str]:
        """One new chat per user (their records are created on the way)."""
        ids = []
        for token in tokens:
            status, raw = post_json(server.port, "/create-chat", {"token": token})
            if status != 200:
                raise BenchError(f"/create-chat -> HTTP {status}: {raw[:200]!r}")
            ids.append(str(uuid.UUID(json.loads(raw)["chatId"])))
        return ids

    def streams(self, server: Chatsite, tokens: list[str], chats: list[str], count: int) -> Any:
        """Start ``count`` slow chatfile streams in a thread; return (thread, holder)."""
        bodies = [
            {
                "token": token,
                "model": "slow",
                "messages": MESSAGES,
                "chatfile": chat,
                "options": {"num_predict": self.plan.stream_tokens},
            }
            for token, chat in zip(tokens[:count], chats[:count], strict=True)
        ]
        holder: dict[str, Any] = {}

        def run() -> None:
            try:
                holder["result"] = run_load(
                    self.procs,
                    f"http://127.0.0.1:{server.port}/chat",
                    bodies,
                    count,
                    timeout=self.plan.stream_tokens / SLOW_RATE + 60,
                )
            except BenchError as error:
                holder["error"] = error

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, holder

    def resume_figure(self, label: str, server: Chatsite, tokens: list[str], chats: list[str]):
        """Figure 1 on one server: resumes spread over the running answers."""
        plan = self.plan
        lock_dir = Path(server.env["CHATSITE_LOCK_DIR"])
        workers = server.workers()
        thread, holder = self.streams(server, tokens, chats, plan.streams)
        deadline = time.monotonic() + 60
        running: dict[str, int] = {}
        while len(running) < plan.streams and time.monotonic() < deadline:
            if "error" in holder or not thread.is_alive():
                raise BenchError(f"{label}: the streams ended early: {holder.get('error')}")
            time.sleep(0.2)
            running = producers(lock_dir)
        if len(running) < plan.streams:
            raise BenchError(f"{label}: only {len(running)} of {plan.streams} answers started")
        progress(
            f"{label}: {plan.streams} answers running on {len(set(running.values()))} worker(s)"
        )
        users = dict(zip(chats, tokens, strict=False))
        live = list(running)
        rng = random.Random(18)
        results: list[dict[str, Any]] = []

        async def waves() -> None:
            for start in range(0, plan.resumes, plan.wave):
                picks = []
                for k in range(start, min(start + plan.wave, plan.resumes)):
                    chat = rng.choice(live)
                    recent = k % 2 == 1
                    since = max(logged_lines(lock_dir, chat) - 1, 0) if recent else 0
                    picks.append((chat, recent, since))
                done = await asyncio.gather(
                    *(
                        resume_once(server.port, {"token": users[c], "chatId": c, "from": f})
                        for c, _, f in picks
                    ),
                    return_exceptions=True,
                )
                ports = [r["client_port"] for r in done if isinstance(r, dict)]
                owners = serving_workers(server.port, ports, workers) if len(workers) > 1 else {}
                for (chat, recent, since), result in zip(picks, done, strict=True):
                    if not isinstance(result, dict):
                        results.append({"error": repr(result), "recent": recent})
                        continue
                    result.pop("writer").close()
                    served = owners.get(result["client_port"], workers[0])
                    results.append(
                        {
                            **result,
                            "recent": recent,
                            "from": since,
                            "producer": running[chat],
                            "served": served,
                        }
                    )
                await asyncio.sleep(0.02)

        started = time.monotonic()
        asyncio.run(waves())
        spent = time.monotonic() - started
        thread.join(plan.stream_tokens / SLOW_RATE + 120)
        load: LoadResult | None = holder.get("result")
        if load is None:
            raise BenchError(f"{label}: the streams did not end: {holder.get('error')}")
        ended_well = sum(1 for r in load.records if r[5])
        if ended_well != plan.streams:
            self.notes.append(
                f"{label}: {plan.streams - ended_well} of {plan.streams} streams did not end "
                f"with done: {load.samples[:2]}"
            )
        self.report_resumes(label, results, workers, spent)

    def report_resumes(
        self, label: str, results: list[dict[str, Any]], workers: list[int], spent: float
    ) -> None:
        good = [r for r in results if r.get("status") == 200]
        if len(good) != len(results):
            bad = [r.get("error") or f"HTTP {r.get('status')}" for r in results if r not in good]
            self.notes.append(f"{label}: {len(bad)} resumes failed, e.g. {bad[:3]}")
        for name, chosen in (
            ("all", good),
            ("from 0", [r for r in good if not r["recent"]]),
            ("from a recent seq", [r for r in good if r["recent"]]),
        ):
            times = [r["ms"] for r in chosen]
            p50, p95 = percentile(times, 50), percentile(times, 95)
            verdict = (
                ""
                if name != "all"
                else ("  (goal met)" if p95 < GOAL_P95_MS else "  (GOAL NOT MET)")
            )
            self.rows.append(
                (
                    f"{label}: /resume to first line, {name} ({len(times)})",
                    f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {max(times, default=0):6.1f} ms"
                    + verdict,
                )
            )
        wrong = [r for r in good if r["seq"] != r["from"] and not r["gap"]]
        if wrong:
            self.notes.append(
                f"{label}: {len(wrong)} resumes began at another seq than asked, e.g. "
                f"{[(r['from'], r['seq']) for r in wrong[:3]]}"
            )
        if len(workers) > 1:
            elsewhere = sum(1 for r in good if r["served"] != r["producer"])
            unknown = sum(1 for r in good if r["served"] is None)
            times = [r["ms"] for r in good if r["served"] != r["producer"]]
            self.rows.append(
                (
                    f"{label}: resumes served by the other worker",
                    f"{elsewhere} of {len(good)}; p50 {percentile(times, 50):.1f} ms, p95 "
                    f"{percentile(times, 95):.1f} ms"
                    + (f" ({unknown} unknown)" if unknown else ""),
                )
            )
        progress(f"{label}: {len(results)} resumes in {spent:.1f} s")

    def cpu_figure(self, servers: dict[str, Chatsite], tokens: dict[str, list[str]]) -> None:
        """Figure 2: worker CPU per token, chatfile streams, the revisions alternating."""
        plan = self.plan
        chats = {name: self.chats(server, tokens[name]) for name, server in servers.items()}
        per_token: dict[str, list[float]] = {name: [] for name in servers}
        count = plan.cpu_streams
        # Warm up every user the runs use (imports, pools, each user's first folders and
        # files): else the first repetition pays them, for both revisions alike.
        for name, server in servers.items():
            self.cpu_run(server, tokens[name][:count], chats[name][:count], 10)
        for rep in range(plan.reps):
            for name, server in servers.items():
                cpu, lines = self.cpu_run(
                    server, tokens[name][:count], chats[name][:count], plan.cpu_tokens
                )
                per_token[name].append(cpu / max(lines, 1) * 1e6)
                progress(f"cpu rep {rep + 1} {name}: {per_token[name][-1]:.1f} us per token")
        base, current = per_token["baseline"], per_token["this tree"]
        kind = "streams without chatfile" if self.args.no_chatfile else "chatfile streams"
        for name, values in per_token.items():
            self.rows.append(
                (
                    f"{kind}, {plan.cpu_streams} x {plan.cpu_tokens} tokens: worker CPU "
                    f"per token, {name}",
                    f"{min(values):.1f} us (runs: {', '.join(f'{v:.1f}' for v in values)})",
                )
            )
        paired = statistics.median(c / b for c, b in zip(current, base, strict=True))
        # The verdict reads the median of the paired ratios (each run against the run of
        # the other revision just before it): on a shared machine one lucky or unlucky run
        # moves a best-of ratio by 10-20 %, the median of five pairs much less.
        verdict = "goal met" if paired <= 1.10 else "GOAL NOT MET"
        self.rows.append(
            (
                "this tree / baseline, CPU per token (goal: median of pairs <= 1.10)",
                f"{min(current) / min(base):.3f} best of each; {paired:.3f} median of pairs "
                f"({verdict})",
            )
        )

    def cpu_run(
        self, server: Chatsite, tokens: list[str], chats: list[str], length: int
    ) -> tuple[float, int]:
        """One load of slow chatfile streams, one per user; the worker's CPU and token lines."""
        bodies = [
            {
                "token": token,
                "model": "slow",
                "messages": MESSAGES,
                "chatfile": chat,
                "options": {"num_predict": length},
            }
            for token, chat in zip(tokens, chats, strict=True)
        ]
        if self.args.no_chatfile:
            for body in bodies:
                del body["chatfile"]
        probe = Probe({"worker": server.worker})
        result = run_load(
            self.procs,
            f"http://127.0.0.1:{server.port}/chat",
            bodies,
            len(bodies),
            timeout=length / SLOW_RATE + 60,
            probe=probe,
        )
        bad = sum(1 for r in result.records if not r[5])
        if bad:
            self.notes.append(f"CPU run on {server.name}: {bad} streams did not end with done")
        server.check_worker()
        return probe.result["cpu_worker"], result.token_lines()

    def table(self) -> str:
        width = max(len(label) for label, _ in self.rows)
        lines = [f"{label:<{width}} | {value}" for label, value in self.rows]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (under a minute)")
    parser.add_argument(
        "--baseline", default=BEFORE_18, metavar="REV", help=f"revision (default {BEFORE_18})"
    )
    parser.add_argument(
        "--also", metavar="REV", help="measure this revision's CPU per token too (a third row)"
    )
    parser.add_argument(
        "--no-chatfile",
        action="store_true",
        help="CPU per token without a chatfile (a control: the path #18 left as it was)",
    )
    parser.add_argument("--no-cpu", action="store_true", help="only the /resume figure")
    parser.add_argument("--no-resume", action="store_true", help="only the CPU figure")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir and logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    tmpdir = Path(tempfile.mkdtemp(prefix="chatsite-bench-resume-"))
    baseline_src = tmpdir / "baseline-src"
    also_src = tmpdir / "also-src"
    procs = Processes()
    bench = ResumeBench(args, plan, procs)
    code = 0
    try:
        upstream = start_upstream(procs)
        one = Chatsite(procs, tmpdir, upstream)
        one.start()
        two = one.deployed_twin()
        two.name, two.log_path = "gunicorn-2workers", tmpdir / "gunicorn-2workers.log"
        two.env["CHATSITE_WORKERS"] = "2"
        two.launch()
        users = max(plan.streams, plan.cpu_streams)
        tokens = [one.token() for _ in range(users)]
        load = os.getloadavg()
        bench.notes.append(f"load average at the start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        if not args.no_resume:
            chats = bench.chats(one, tokens[: plan.streams])
            bench.resume_figure("2 workers", two, tokens, chats)
            procs.stop(two.master, signal.SIGINT)
            bench.resume_figure("1 worker", one, tokens, chats)
        if not args.no_cpu:
            label = checkout(args.baseline, baseline_src)
            baseline = one.baseline_twin(baseline_src)
            baseline.start()
            progress(f"baseline {label} on 127.0.0.1:{baseline.port}")
            bench.notes.append(f"baseline: {label}")
            servers = {"baseline": baseline, "this tree": one}
            if args.also:
                also_label = checkout(args.also, also_src)
                servers[args.also] = one.baseline_twin(also_src, "also")
                servers[args.also].start()
                bench.notes.append(f"also: {also_label}")
            bench.cpu_figure(servers, {name: tokens[: plan.cpu_streams] for name in servers})
        load = os.getloadavg()
        bench.notes.append(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        bench.notes.append(f"total time {time.monotonic() - started:.0f} s")
        sys.stdout.write(bench.table() + "\n")
    except BenchError as error:
        progress(f"FAILED: {error}")
        code = 1
    except KeyboardInterrupt:
        progress("interrupted")
        code = 130
    finally:
        clean_up(procs, tmpdir, [baseline_src, also_src], args.keep_tmp or code == 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
