"""The results as a text table on stdout and in full in ``bench/last-results.json``.

Kept apart from the figures so that what is measured and how it is shown change separately.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Iterable
from typing import Any

from figures import SLOW_RATE, TARGETS, Bench
from processes import BENCH

RESULTS_FILE = BENCH / "last-results.json"


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
    # The baseline's column and ratio only when there is one (--baseline).
    targets = [t for t in TARGETS if t != "baseline" or bench.baseline is not None]
    pairs = [("chatsite", "floor"), ("chatsite", "direct"), ("openai", "chatsite")]
    names = ["/floor", "/direct", "openai/ollama"]
    if bench.baseline is not None:
        pairs.append(("chatsite", "baseline"))
        names.append("/baseline")
    header = ("figure", *targets, *names)
    body = []
    for row in bench.rows.values():
        values = {t: row.reduced(t) for t in targets}
        cells = [
            ("N/A" if t in row.na else fmt(values[t], row.unit)) + row.bad_note(t) for t in targets
        ]
        ratios = []
        for ours, theirs in pairs:
            mine, other = values[ours], values[theirs]
            ok = not {ours, theirs} & set(row.na) and mine is not None and other
            ratios.append(f"{mine / other:.2f}" if ok else "N/A")
        body.append((row.label, *cells, *ratios))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt_row(r: tuple[str, ...]) -> str:
        return " | ".join(
            f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}"
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )

    lines.append(fmt_row(header))
    lines.append("-+-".join("-" * w for w in widths))
    lines += [fmt_row(r) for r in body]
    lines.append("")
    lines.append(
        f"best of up to {bench.plan.reps} run(s) each, among those with the fewest "
        f"failures (lowest latency/CPU, highest rate/share/RSS); "
        f"/floor, /direct = chatsite / floor, chatsite / direct; openai = chatsite relaying "
        f"the upstream's OpenAI API (SSE), openai/ollama = openai / chatsite"
    )
    if bench.baseline is not None:
        lines.append(
            f"baseline = chatsite at {bench.baseline_label}, measured in the same run; "
            f"/baseline = chatsite / baseline"
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
        "openai_chat_status": getattr(bench, "openai_status", None),
        "baseline": getattr(bench, "baseline_label", None),
        "baseline_chat_status": getattr(bench, "baseline_status", None),
        "notes": notes,
        "table": {
            key: {
                "label": row.label,
                "unit": row.unit,
                "best": row.best,
                **{t: None if t in row.na else row.reduced(t) for t in TARGETS},
                "values": row.values,
                "bad": row.bad,
            }
            for key, row in bench.rows.items()
        },
        "runs": bench.runs,
        "error_samples": bench.samples[:50],
    }
    RESULTS_FILE.write_text(json.dumps(data, indent=1) + "\n")
