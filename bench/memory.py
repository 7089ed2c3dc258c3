"""Worker memory under waves of the largest accepted /chat bodies (issue #22, item 3).

    .venv/bin/python bench/memory.py                 # 8 waves of 20 bodies of ~800 KB
    .venv/bin/python bench/memory.py --waves 12 --users 40
    .venv/bin/python bench/memory.py --tracemalloc   # where the Python heap goes, in-process

The first form runs chatsite as deployed (one gevent worker) in front of bench/upstream.py and
prints the worker's RSS after each wave: `--users` clients at once, each sending a valid body
of `--messages` messages that together come just under MAX_CONTENT_LENGTH. The second runs the
same waves through the app in this process under tracemalloc and prints what the Python heap
holds after each wave, with the lines that allocated most of it: if it does not grow while
the RSS does, what grows is the C allocator keeping freed memory, not a leak of objects.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from processes import REPO, Processes, progress, rss_mib
from services import Chatsite, start_upstream

LIMIT = 1048576  # MAX_CONTENT_LENGTH's default


def big_body(token: str, messages: int, limit: int = LIMIT) -> bytes:
    """A valid /chat body of `messages` messages whose JSON comes just under `limit` bytes."""
    skeleton = {"token": token, "model": "fast", "options": {"num_predict": 20}}
    room = limit - len(json.dumps(skeleton)) - 2000
    each = room // messages - len('{"role": "user", "content": ""}, ')
    chat = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "x" * each}
        for i in range(messages - 1)
    ]
    chat.append({"role": "user", "content": "x" * each})
    return json.dumps({**skeleton, "messages": chat}).encode()


def post(port: int, body: bytes, results: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/chat", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        lines = response.read().splitlines()
        results.append(response.status == 200 and json.loads(lines[-1]).get("done") is True)
    except OSError:
        results.append(False)
    finally:
        conn.close()


def wave(port: int, bodies: list[bytes]) -> int:
    """Send every body at once; return how many were answered in full."""
    results: list[bool] = []
    threads = [threading.Thread(target=post, args=(port, body, results)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(results)


def over_gunicorn(args: argparse.Namespace) -> None:
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="chatsite-memory-") as tmp:
            upstream = start_upstream(procs)
            extra = dict(item.split("=", 1) for item in args.env)
            if args.no_recycle:
                extra["CHATSITE_MAX_REQUESTS"] = "0"
            site = Chatsite(procs, Path(tmp), upstream, extra_env=extra)
            site.start()
            worker = site.find_worker()
            bodies = [big_body(site.token(), args.messages) for _ in range(args.users)]
            progress(f"body: {len(bodies[0]) / 1024:.0f} KiB, {args.messages} messages")
            print(f"before: {rss_mib(worker):.0f} MiB")
            for number in range(1, args.waves + 1):
                served = wave(site.port, bodies)
                time.sleep(0.5)
                now = site.find_worker()
                note = "" if now == worker else " (a new worker: recycled)"
                worker = now
                rss = rss_mib(worker)
                print(f"wave {number}: {served}/{args.users} served, RSS {rss:.0f} MiB{note}")
    finally:
        procs.stop_all()


def in_process(args: argparse.Namespace) -> None:
    """The same waves through the app in this process (gevent-free), under tracemalloc."""
    sys.path.insert(0, str(REPO))
    from chatsite.dev.instance import DevInstance
    from tests.helpers import build_app, sign_token

    tracemalloc.start(10)
    with tempfile.TemporaryDirectory() as tmp, DevInstance() as dev:
        instances = [{"url": dev.url, "max_concurrent": 64}]
        app = build_app(Path(tmp), f"sqlite:///{tmp}/m.db", CHAT_INSTANCES=instances)
        client = app.test_client()
        baseline = tracemalloc.take_snapshot()
        for number in range(1, args.waves + 1):
            for _ in range(args.users):
                body = big_body(sign_token(), args.messages).replace(b'"fast"', b'"echo"')
                response = client.post("/chat", data=body, content_type="application/json")
                response.get_data()
                response.close()
            gc.collect()
            # What the dev instance keeps of the last requests is not chatsite's.
            outside = tracemalloc.Filter(False, "*/chatsite/dev/*", all_frames=True)
            snapshot = tracemalloc.take_snapshot().filter_traces([outside])
            held = sum(stat.size for stat in snapshot.statistics("filename"))
            print(f"wave {number}: Python heap {held / 2**20:.1f} MiB")
        for stat in snapshot.compare_to(baseline, "lineno")[:8]:
            print(f"  {stat}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=8)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--tracemalloc", action="store_true", help="in-process, Python heap")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for gunicorn")
    parser.add_argument("--no-recycle", action="store_true", help="MAX_REQUESTS=0")
    args = parser.parse_args()
    (in_process if args.tracemalloc else over_gunicorn)(args)


if __name__ == "__main__":
    main()
