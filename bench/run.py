"""Benchmark driver: what chatsite costs per streamed token, compared with the direct path.

It starts everything it needs (the fast upstream ``bench/upstream.py``, chatsite under gunicorn
with one gevent worker relaying the upstream's Ollama API, its twin relaying the upstream's
OpenAI API, the gevent floor, with ``--baseline REV`` chatsite as it was at a git revision,
and ``bench/load.py`` load clients), measures four figures for
them and for the direct path (client straight to the upstream), prints one table with the
ratios, writes ``bench/last-results.json``, and stops every process it started, also on Ctrl-C
or on an error. See ``bench/README.md`` for the definitions.

This file is the entry point: the command line and the order of things. The work is in
``processes.py`` (starting, stopping and reading processes), ``services.py`` (the upstream and
chatsite under gunicorn), ``loadgen.py`` (running ``load.py`` clients), ``figures.py`` (the
four figures) and ``report.py`` (the table and the JSON file).

Usage: ``.venv/bin/python bench/run.py [--quick] [--only N] [--direct-only]``.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from figures import FULL, QUICK, Bench, Plan
from processes import REPO, BenchError, Processes, progress
from report import RESULTS_FILE, busy_warnings, table, write_json
from services import Chatsite, Floor, start_upstream


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (~1 min)")
    parser.add_argument("--only", type=int, choices=(1, 2, 3, 4), help="run one figure")
    parser.add_argument(
        "--direct-only",
        action="store_true",
        help="do not start chatsite; measure the direct path only",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="do not run the gevent floor (bench/floor.py)"
    )
    parser.add_argument(
        "--no-openai",
        action="store_true",
        help="do not run chatsite relaying the upstream's OpenAI API (the openai column)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure chatsite as it was at git revision REV (a column and a ratio)",
    )
    parser.add_argument(
        "--no-deployed",
        action="store_true",
        help="skip figure 3's deployed row (gunicorn.conf.py's workers, 2,000 streams)",
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
        default=170,
        help="seconds after which repetitions beyond the 2nd are skipped",
    )
    args = parser.parse_args(argv)
    for item in args.env:
        if not item.startswith("CHATSITE_") or "=" not in item:
            parser.error(f"--env wants CHATSITE_NAME=VALUE, got {item!r}")
    return args


def checkout(rev: str, where: Path) -> str:
    """Check ``rev`` out into a detached git worktree at ``where``; return its label."""
    label = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %s", rev],
        capture_output=True,
        text=True,
    )
    if label.returncode:
        raise BenchError(f"--baseline {rev}: {label.stderr.strip()}")
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev],
        capture_output=True,
        text=True,
    )
    if added.returncode:
        raise BenchError(f"git worktree add {rev}: {added.stderr.strip()}")
    return label.stdout.strip()[:70]


def remove_checkout(where: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
        capture_output=True,
    )


def clean_up(procs: Processes, tmpdir: Path, checkouts: list[Path], keep: bool) -> None:
    """Stop every child, remove the revisions checked out, and the temp dir unless `keep`
    (a failed run keeps it too, for gunicorn.log)."""
    procs.stop_all()
    for source in checkouts:
        if source.exists():
            remove_checkout(source)
    if keep:
        progress(f"temp dir kept: {tmpdir}")
    else:
        shutil.rmtree(tmpdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    if args.no_deployed:
        plan = Plan(**{**plan.__dict__, "deployed_streams": 0})
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
    openai = None
    baseline = None
    baseline_label = ""
    baseline_src = tmpdir / "baseline-src"
    notes: list[str] = []
    code = 0
    try:
        upstream_port = start_upstream(procs)
        upstream_pid = procs.started[-1].pid
        progress(f"upstream on 127.0.0.1:{upstream_port}")
        floor = None
        if not args.no_floor:
            floor = Floor(procs, upstream_port)
            floor.start()
            progress(f"floor on 127.0.0.1:{floor.port} (pid {floor.worker})")
        if not args.direct_only:
            extra = dict(item.split("=", 1) for item in args.env)
            chatsite = Chatsite(procs, tmpdir, upstream_port, extra)
            notes += [f"extra setting: {key}={value}" for key, value in extra.items()]
            chatsite.start()
            progress(f"chatsite on 127.0.0.1:{chatsite.port} (worker pid {chatsite.worker})")
            if not args.no_openai:
                openai = chatsite.openai_twin(upstream_port)
                openai.launch()
                progress(
                    f"chatsite relaying the OpenAI API on 127.0.0.1:{openai.port} "
                    f"(worker pid {openai.worker})"
                )
            if args.baseline:
                baseline_label = checkout(args.baseline, baseline_src)
                baseline = chatsite.baseline_twin(baseline_src)
                baseline.start()
                progress(
                    f"baseline {baseline_label} on 127.0.0.1:{baseline.port} "
                    f"(worker pid {baseline.worker})"
                )
        bench = Bench(
            args, plan, procs, upstream_port, upstream_pid, chatsite, floor, openai, baseline
        )
        bench.baseline_label = baseline_label
        if chatsite:
            bench.prepare_chatsite()
            if not bench.chat_ok:
                notes.append(
                    f"chatsite /chat not working, streaming figures are direct only: "
                    f"{bench.chat_status['detail']}"
                )
            if openai and not bench.openai_ok:
                notes.append(
                    f"chatsite /chat through the OpenAI API not working, no openai column: "
                    f"{bench.openai_status['detail']}"
                )
            if baseline and not bench.baseline_ok:
                notes.append(
                    f"the baseline's /chat not working, no baseline column: "
                    f"{bench.baseline_status['detail']}"
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
        for server in (chatsite, openai, baseline):
            if server:
                notes += server.notes
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
        clean_up(procs, tmpdir, [baseline_src], args.keep_tmp or code == 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
