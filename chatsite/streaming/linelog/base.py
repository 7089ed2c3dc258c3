"""The line log of one answer, and the store that shares it beyond its process.

A `/chat` answer with a `chatfile` is produced by a greenlet of its own, which writes every
stream line into the answer's log; the original response and any `/resume` are readers of
that log. A line's `seq` is its index in the log (0, 1, 2, ...).

Two layers, so that a connected client pays no more than an in-memory append per line:

- `answers.AnswerLog` (this package) keeps the lines in memory for the readers of the
  producer's own process, and hands them in batches (every `FLUSH_SECONDS` while a reader
  in another process follows, every `UNFOLLOWED_FLUSH_SECONDS` while none does) to
- a `SharedLog` of the back end (`files`: all workers of one host; `redis`: every host),
  from which readers of other processes follow (`LineStore.follow`).

A back end is one module with a `LineStore`; `make_line_store` (in `__init__`) picks it from
the coordination config, as `coordination.make_coordinator` does.
"""

from collections.abc import Iterator
from typing import Protocol

import orjson

FLUSH_SECONDS = 0.05  # the longest a line waits in memory while another process follows
# ... and while none does: each flush costs a write and a look for readers, which at every
# 50 ms for each of hundreds of answers would cost more than relaying their tokens.
UNFOLLOWED_FLUSH_SECONDS = 1.0
FOLLOW_POLL_SECONDS = 1.0  # a remote reader looks again at least this often, woken or not
LOST = "the answer was interrupted (its server stopped); the chat holds what was saved"


class ProducerLost(Exception):
    """The answer's producer is gone (its worker was killed) and the log has no last line."""


class LineReader(Protocol):
    """One reader following an answer's log, from some line to the last one.

    Iterating yields lists of lines (each one encoded NDJSON line with its newline, in seq
    order, none left out or given twice) as they become available, blocking cooperatively
    in between, and ends after the answer's last line. If older lines than the ones asked
    for are no longer kept, the first line given carries `"gap": true` (see `mark_gap`).
    Raises `ProducerLost` when the producer died before its last line. `close()` detaches
    (idempotent); the answer goes on.
    """

    def __iter__(self) -> Iterator[list[bytes]]: ...

    def close(self) -> None: ...


class SharedLog(Protocol):
    """The producer's handle on one answer's log in a shared store (one per answer).

    Only the producer writes, in order; `AnswerLog` calls `write` from a single greenlet,
    with batches (never one call per line while lines arrive quickly).
    """

    def write(self, lines: list[bytes], first: int) -> int:
        """Append `lines`, whose first has seq `first` (the previous batch ended just before),
        and return how many readers follow through the store now (as `readers()` counts
        them, found with the write: a flush needs no second look)."""

    def end(self) -> None:
        """The last line has been written: the log is complete, and is kept for the keep time
        (`RESUME_KEEP_SECONDS`) from now, then forgotten (expired keys, removed files)."""

    def readers(self) -> int:
        """How many readers follow the answer through the store now (other processes, hosts);
        an estimate is fine (it only decides whether anyone is reading)."""

    def close(self) -> None:
        """The producer lets go (after `end`, or when it fails): a log that was never ended
        is seen by its readers as `ProducerLost` (at once or within a lease's time)."""


class LineStore(Protocol):
    """Where answers' logs are shared; keyed by (user, chat): another user never finds one.

    `user_id` and `chat_id` are canonical uuids (checked by the caller); a back end never
    uses them as paths or keys as they are without canonical form or hashing.
    """

    keep_seconds: float  # RESUME_KEEP_SECONDS
    keep_lines: int  # RESUME_KEEP_LINES: a log keeps at most this many of its latest lines

    def create(self, user_id: str, chat_id: str) -> SharedLog:
        """Start the log of a new answer of the chat, replacing any earlier one (the user's
        lock makes sure that no other answer of this user is being produced)."""

    def follow(self, user_id: str, chat_id: str, start: int) -> LineReader | None:
        """A reader from line `start` (or the oldest kept, marked as a gap) to the end.

        None when there is nothing to resume: no log for the chat, or one that ended more
        than the keep time ago.
        """

    def generating(self, user_id: str, chat_id: str) -> bool:
        """True while the chat's answer is being produced (its producer alive, no last line)."""

    def generating_chat(self, user_id: str) -> str | None:
        """The chat of the user whose answer is being produced now, or None.

        (A stand-in until the coordination records it with the user's lock, issue #19.)
        """


def mark_gap(line: bytes) -> bytes:
    """The line with `"gap": true` added: older lines than the reader asked for are gone."""
    return orjson.dumps({**orjson.loads(line), "gap": True}, option=orjson.OPT_APPEND_NEWLINE)
