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

__all__ = [
    "FLUSH_SECONDS",
    "LOST",
    "LineReader",
    "LineStore",
    "ProducerLost",
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
    # Until the Redis back end lands (branch i18-redis: `redis.RedisLineStore(url, prefix,
    # keep_seconds, keep_lines)`), a Redis deployment shares logs between one host's workers.
    from .files import FileLineStore

    return FileLineStore(config["LOCK_DIR"], coordinator, keep_seconds, keep_lines)
