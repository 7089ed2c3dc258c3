"""Answers' line logs shared beyond the producer's process: the interface (`base`) and one
module per back end (`files`: the workers of one host; `redis`: every host), as
`coordination/` has them. `make_line_store` picks the back end from the coordination config.
"""

from typing import Any

from .base import (
    FLUSH_SECONDS,
    LOST,
    LineReader,
    LineStore,
    ProducerLost,
    SharedLog,
    mark_gap,
)
from .redis import RedisLineStore

__all__ = [
    "FLUSH_SECONDS",
    "LOST",
    "LineReader",
    "LineStore",
    "ProducerLost",
    "RedisLineStore",
    "SharedLog",
    "make_line_store",
    "mark_gap",
]


def make_line_store(config: dict[str, Any], coordinator: Any) -> LineStore | None:
    """The store that spans what the coordination spans; None for one process only.

    Redis when `REDIS_URL` is set (every host); else files in the lock folder, woken through
    the file coordination's mailboxes (all workers of one host); `COORDINATION = "local"`:
    None, the in-memory logs of the process are all there is.
    """
    keep_seconds = float(config["RESUME_KEEP_SECONDS"])
    keep_lines = int(config["RESUME_KEEP_LINES"])
    if config.get("COORDINATION") == "local" and not config.get("REDIS_URL"):
        return None
    if config.get("REDIS_URL"):
        return RedisLineStore(
            config["REDIS_URL"],
            prefix=config["REDIS_PREFIX"],
            keep_seconds=keep_seconds,
            keep_lines=keep_lines,
            ttl=float(config["LEASE_TTL"]),
        )
    from .files import FileLineStore

    return FileLineStore(config["LOCK_DIR"], coordinator, keep_seconds, keep_lines)
