"""Search benchmark: `/search-chats` p95 for a user with 100,000 messages, SQLite and PostgreSQL.

For each database it builds a site (the database transcript store, as hosts sharing
PostgreSQL use), saves the chats through chatsite's own storage code (so the index is built
as every save builds it): the measured user's 100,000 messages in 2,000 chats of 50, and
other users' chats beside them, in words drawn from a Zipf-like vocabulary with accented,
Cyrillic and Japanese words among them. Then it times POST /search-chats through the app
(authentication, validation, index query, snippets, JSON) for a mix of queries: common and
rare words, two words, a prefix, a word with accents typed without them, Japanese text
with no spaces, and a word that is nowhere.

Usage: ``.venv/bin/python bench/search.py [--postgres URL] [--messages N] [--searches N]``.
PostgreSQL is measured when ``--postgres`` or ``CHATSITE_TEST_DATABASE_URL`` gives a URL
(the tables go in a schema of their own, dropped afterwards); otherwise the table says why not.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
from playhouse.db_url import connect as connect_url

from chatsite import create_app
from chatsite.storage.chats import ChatSeed, create_chat
from chatsite.storage.database import database_connection
from chatsite.storage.tables import User, create_tables

SECRET = "bench-search-" + "s" * 40
TARGET_P95_MS = 100
MESSAGES_PER_CHAT = 50
OTHER_USERS = 5
SPECIAL_WORDS = ["crème", "brûlée", "Köln", "ñandú", "привет", "東京タワー", "ラーメン", "zurich"]
QUERIES = [
    "w7",  # among the commonest words
    "w4000",  # rare
    "w12 w30",  # two words
    "w99",  # a prefix of w990...w999 too
    "creme brulee",  # typed without accents
    "東京",  # inside text written without spaces
    "ПРИВЕТ",
    "nowhere",  # in no chat
]


def vocabulary(rng: random.Random, size: int = 5000) -> tuple[list[str], list[float]]:
    words = [f"w{index}" for index in range(size)] + SPECIAL_WORDS
    weights = [1 / (rank + 1) for rank in range(size)] + [0.002] * len(SPECIAL_WORDS)
    return words, weights


def message_text(rng: random.Random, words: list[str], weights: list[float]) -> str:
    return " ".join(rng.choices(words, weights, k=rng.randint(10, 60)))


def fill(app, user: str, chats: int, rng: random.Random, words, weights) -> None:
    """Save `chats` chats of MESSAGES_PER_CHAT messages for `user` through the storage code."""
    site = app.extensions["chatsite"]
    with app.app_context(), database_connection():
        User.insert(uuid=user).on_conflict_ignore().execute()
        for _ in range(chats):
            texts = [message_text(rng, words, weights) for _ in range(MESSAGES_PER_CHAT)]
            roles = ("user", "assistant")
            messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
            seed = ChatSeed(name=texts[0][:60], messages=messages)
            create_chat(site.transcripts, user, 10**6, 10**12, seed)


def measure(url: str, folder: Path, messages: int, searches: int) -> dict:
    """Build the data in the database at `url`, then time the searches."""
    app = create_app(
        {
            "JWT_SECRET": SECRET,
            "DATABASE_URL": url,
            "CHAT_STORE": "database",
            "CHAT_DIR": str(folder / "chats"),
            "LOCK_DIR": str(folder / "locks"),
            "CHAT_INSTANCES": [],
        },
        instance_path=str(folder / "instance"),
    )
    with app.app_context():
        create_tables()
    rng = random.Random(19)
    words, weights = vocabulary(rng)
    user = str(uuid.uuid4())
    started = time.monotonic()
    fill(app, user, messages // MESSAGES_PER_CHAT, rng, words, weights)
    for _ in range(OTHER_USERS):
        fill(app, str(uuid.uuid4()), messages // MESSAGES_PER_CHAT // 10, rng, words, weights)
    built = time.monotonic() - started
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, "HS256")
    client = app.test_client()
    timings: list[float] = []
    hits: dict[str, int] = {}
    for index in range(searches + len(QUERIES)):  # the first round warms up, untimed
        query = QUERIES[index % len(QUERIES)]
        begin = time.perf_counter()
        response = client.post("/search-chats", json={"token": token, "q": query})
        elapsed = time.perf_counter() - begin
        if response.status_code != 200:
            raise SystemExit(f"search failed: {response.status_code} {response.text}")
        hits[query] = len(response.json["chats"])
        if index >= len(QUERIES):
            timings.append(elapsed * 1000)
    app.extensions["chatsite"].catalog.close()
    timings.sort()
    return {
        "built_s": built,
        "p50": statistics.median(timings),
        "p95": timings[int(len(timings) * 0.95) - 1],
        "max": timings[-1],
        "hits": hits,
    }


def postgres_schema_url(base: str) -> tuple[str, object, str]:
    """A URL whose tables live in a fresh schema; (url, admin connection, schema)."""
    admin = connect_url(base)
    admin.connect()
    schema = f"chatsite_bench_{uuid.uuid4().hex[:12]}"
    admin.execute_sql(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}", admin, schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--postgres", default=os.environ.get("CHATSITE_TEST_DATABASE_URL"))
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=400)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="chatsite-bench-search-") as temp:
        folder = Path(temp)
        print("search bench: SQLite ...", file=sys.stderr)
        rows.append(
            (
                "SQLite",
                measure(f"sqlite:///{folder / 'bench.db'}", folder, args.messages, args.searches),
            )
        )
        if args.postgres:
            print("search bench: PostgreSQL ...", file=sys.stderr)
            url, admin, schema = postgres_schema_url(args.postgres)
            try:
                rows.append(("PostgreSQL", measure(url, folder, args.messages, args.searches)))
            finally:
                admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')
                admin.close()
        else:
            rows.append(("PostgreSQL", None))
    print(f"\n/search-chats, one user with {args.messages:,} messages, {args.searches} searches")
    print(f"{'database':<12}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'build s':>9}  p95 < 100 ms")
    ok = True
    for name, result in rows:
        if result is None:
            print(f"{name:<12}  not measured: give --postgres URL (or CHATSITE_TEST_DATABASE_URL)")
            continue
        good = result["p95"] < TARGET_P95_MS
        ok &= good
        print(
            f"{name:<12}{result['p50']:>9.1f}{result['p95']:>9.1f}{result['max']:>9.1f}"
            f"{result['built_s']:>9.0f}  {'yes' if good else 'NO'}"
        )
    print("hits per query (SQLite):", rows[0][1]["hits"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
