"""A reader following an answer's Redis stream, from any host, to its last line.

`XREAD BLOCK` from the last entry read: it answers at once with what is there and waits
(up to `FOLLOW_POLL_SECONDS`) for more. When it finds nothing new, the reader looks at the
user's answering key: a producer that no longer holds it without having written the end
mark is lost. A line whose seq is not the one expected (trimmed by `MAXLEN` before it was
read) carries `"gap": true`. The reader marks itself in the answer's readers (a sorted set
of marks that lapse) so that the producer knows someone still reads. Redis away (a restart,
a failover), the reader looks again every poll for up to a lease's time, then gives up with
`ProducerLost`: its client may resume.
"""

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import redis

from .base import FOLLOW_POLL_SECONDS, ProducerLost, mark_gap

log = logging.getLogger(__name__)

READ_COUNT = 500  # entries per XREAD at most
READER_MARK_SECONDS = 5 * FOLLOW_POLL_SECONDS  # a reader counts this long after its last mark

LINE = b"l"  # the field of an entry that holds its line
END = b"e"  # the field of the entry after the last line: the log has ended


def entry_id(seq: int) -> str:
    """The stream entry id of line `seq` (0-0 is not a valid id: ids start at 0-1)."""
    return f"0-{seq + 1}"


def seq_of(entry: bytes) -> int:
    return int(entry.split(b"-", 1)[1]) - 1


class RedisLineReader:
    """One reader of one answer; `close()` only detaches."""

    def __init__(
        self, store: Any, keys: tuple[str, str, str], owner: str | None, start: int
    ) -> None:
        self._store = store
        self._answering, self._stream, self._readers = keys
        self._owner = owner  # the producer followed; None: the answer had ended
        self._start = start
        self._id = secrets.token_hex(8)
        self._marked = 0.0
        self._closed = False
        self._body = self._lines()

    def __iter__(self) -> Iterator[list[bytes]]:
        return self._body

    def close(self) -> None:
        """Stop following (idempotent) and take this reader's mark away."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError):  # iterating in another greenlet: it stops soon
            self._body.close()
        try:
            self._store.client.zrem(self._readers, self._id)
        except redis.RedisError:
            log.warning("could not unmark a reader of %s; its mark lapses", self._stream)

    def _lines(self) -> Iterator[list[bytes]]:
        expected, last = self._start, entry_id(self._start - 1)
        failing_since = None
        while not self._closed:
            try:
                entries = self._next_entries(last)
            except redis.RedisError:
                # Redis away (restarting, failing over): look again, for a lease's time.
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self._store.ttl:
                    log.warning("Redis away too long for a reader of %s", self._stream)
                    raise ProducerLost(self._stream) from None
                time.sleep(FOLLOW_POLL_SECONDS)
                continue
            failing_since = None
            if entries is None:
                return  # (the reader began past the end)
            if not entries:
                continue
            lines = []
            for entry, fields in entries:
                if END in fields:
                    if lines:
                        yield lines
                    return
                seq, line = seq_of(entry), fields[LINE]
                lines.append(mark_gap(line) if seq != expected else line)
                expected, last = seq + 1, entry
            yield lines

    def _next_entries(self, last: bytes | str) -> list | None:
        """The next entries; [] while the producer runs and wrote nothing new; None when the
        log has ended before them; `ProducerLost` when the producer left without an end."""
        entries = self._read(last)
        if entries or self._producing():
            return entries
        entries = self._read(last, block=False)  # what came since: the end, perhaps
        if entries:
            return entries
        if self._ended():
            return None
        raise ProducerLost(self._stream)

    def _read(self, last: bytes | str, block: bool = True) -> list:
        """The entries after `last`, waiting for some at most a poll's time; marks us reading."""
        client = self._store.client
        pipe = client.pipeline(transaction=False)
        now = time.monotonic()
        if now - self._marked >= FOLLOW_POLL_SECONDS:
            self._marked = now
            ms = round(READER_MARK_SECONDS * 1000)
            self._store.mark_reader(keys=[self._readers], args=[self._id, ms], client=pipe)
        block_ms = round(FOLLOW_POLL_SECONDS * 1000) if block else None
        pipe.xread({self._stream: last}, count=READ_COUNT, block=block_ms)
        found = pipe.execute()[-1]
        return found[0][1] if found else []

    def _producing(self) -> bool:
        """Whether the producer followed still holds the user's answering key."""
        owner = self._store.client.get(self._answering)
        return self._owner is not None and owner is not None and owner.decode() == self._owner

    def _ended(self) -> bool:
        """Whether the log's newest entry is its end mark."""
        newest = self._store.client.xrevrange(self._stream, count=1)
        return bool(newest) and END in newest[0][1]
