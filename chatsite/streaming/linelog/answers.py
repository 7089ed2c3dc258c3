"""The local hop: each answer's lines in its producer's memory, and this process's logs.

The producer appends each line to an `AnswerLog` (a list append) and publishes once per
batch (the pieces of one upstream read): readers in this process (the original response, a
`/resume` that lands on this worker) wake and take every line there is. A flusher hands the
new lines to the shared log (`SharedLog`) every `FLUSH_SECONDS` while a reader in another
process follows, else every `UNFOLLOWED_FLUSH_SECONDS`, so a connected client never waits
for a file or a Redis round trip, nor pays for a flush nobody reads.
"""

import logging
import threading
import time
from collections.abc import Iterator

from ...greenlets import WakeUp, run_apart
from .base import (
    FLUSH_SECONDS,
    UNFOLLOWED_FLUSH_SECONDS,
    LineReader,
    LineStore,
    SharedLog,
    mark_gap,
)

log = logging.getLogger(__name__)

PRUNE_SECONDS = 1.0


class AnswerLog:
    """One answer's lines (the latest `keep_lines` of them), its local readers, its flusher."""

    def __init__(self, shared: SharedLog | None, keep_lines: int) -> None:
        self.lines: list[bytes] = []
        self.base = 0  # the seq of lines[0]
        self.count = 0  # lines appended so far: the next line's seq
        self.ended_at: float | None = None  # monotonic; set by `end()`
        self.keep_lines = max(1, keep_lines)
        self._readers: tuple[WakeUp, ...] = ()  # replaced, never changed in place
        self._readers_lock = threading.Lock()  # (attaching, detaching: rare)
        self._last_read = time.monotonic()  # when a local reader last let go
        self._shared = shared
        self._flushed = 0  # lines the shared log has
        self._followed = False  # a reader in another process followed at the last flush
        self._hurry = threading.Event()  # the last reader here left: flush at once
        self.left = False  # ... and the producer saves a checkpoint (it clears this)
        self._flush_lock = threading.Lock()
        self._dirty = threading.Event()
        self._flushing = False

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    # -- the producer --

    def append(self, line: bytes) -> None:
        """Add the next line (an in-memory append; `publish()` tells the readers)."""
        self.lines.append(line)
        self.count += 1

    def publish(self) -> None:
        """Wake the readers for the lines appended since the last call."""
        for event in self._readers:
            event.set()
        if self._shared is not None and not self._dirty.is_set():
            self._dirty.set()
            if not self._flushing:
                self._flushing = True
                run_apart(self._flush_loop, "chatsite-linelog-flusher")
        self._trim()

    def end(self) -> None:
        """The last line is in: publish it, write what is pending and end the shared log."""
        self.ended_at = time.monotonic()
        self.publish()
        if self._shared is None:
            return
        self._dirty.set()  # lets the flusher see the end and leave
        try:
            self._flush()
            self._shared.end()
        except Exception:
            log.exception("could not end the shared log of an answer")
        finally:
            self._shared.close()
        self._forget_if_shared()

    def _forget_if_shared(self) -> None:
        """Drop the lines of an ended answer that no reader here still reads and that the
        shared log holds whole: a later /resume reads them there. Kept in memory for the
        keep time, every answer's lines would stay a minute longer than its stream."""
        shared_whole = self._shared is not None and self._flushed == self.count
        if shared_whole and self.ended and not self._readers:
            self.lines = []
            self.base = self.count

    def unread_seconds(self) -> float:
        """Seconds since any reader, here or elsewhere, followed the answer (0 while one does)."""
        if self._readers:
            return 0.0
        if self._shared is not None:
            try:
                if self._shared.readers():
                    self._last_read = time.monotonic()  # unread from when they leave
                    return 0.0
            except Exception:
                log.warning("could not count an answer's remote readers", exc_info=True)
                return 0.0
        return time.monotonic() - self._last_read

    def _trim(self) -> None:
        """Forget the oldest lines past `keep_lines` (never ones the shared log lacks)."""
        excess = len(self.lines) - self.keep_lines
        if excess > self.keep_lines // 4:  # in steps, not one list shift per line
            excess = min(excess, self._flushed - self.base) if self._shared is not None else excess
            if excess > 0:
                del self.lines[:excess]
                self.base += excess

    def _flush_loop(self) -> None:
        while True:
            self._dirty.wait()
            if not self.ended:  # gather a batch
                if self._wanted():
                    time.sleep(FLUSH_SECONDS)
                elif self._hurry.wait(UNFOLLOWED_FLUSH_SECONDS):  # the client left: now
                    self._hurry.clear()
            self._dirty.clear()
            if self.ended:
                return  # `end()` writes the rest itself
            try:
                readers = self._flush()  # counted with the write; nothing new: ask
                self._followed = (readers if readers is not None else self._shared.readers()) > 0
            except Exception:
                log.warning("could not write an answer's lines to the shared log", exc_info=True)

    def _flush(self) -> int | None:
        """Write the lines the shared log lacks; the readers it counted then (None: nothing
        to write)."""
        with self._flush_lock:
            count = self.count
            if count <= self._flushed:
                return None
            start = self._flushed - self.base
            readers = self._shared.write(self.lines[start : count - self.base], self._flushed)
            self._flushed = count
            return readers

    # -- local readers --

    def follow(self, start: int) -> "MemoryReader":
        return MemoryReader(self, start)

    def _attach(self, event: WakeUp) -> None:
        with self._readers_lock:
            self._readers = (*self._readers, event)

    def _detach(self, event: WakeUp) -> None:
        with self._readers_lock:
            self._readers = tuple(e for e in self._readers if e is not event)
        self._last_read = time.monotonic()
        if not self._readers:
            self._hurry.set()  # its client may come back anywhere: the shared log catches up
            self.left = True
            self._forget_if_shared()

    def _wanted(self) -> bool:
        """Whether the shared log is wanted soon: a reader in another process follows, or
        no reader here does (the client left and may resume on another worker or host).
        While only the client that asked reads it here, a flush every second is enough."""
        return self._followed or not self._readers


class MemoryReader:
    """A reader in the producer's process: it takes the lines straight from the list."""

    def __init__(self, answer: AnswerLog, start: int) -> None:
        self._answer = answer
        self._next = max(0, start)
        self._event = WakeUp()
        self._closed = False
        answer._attach(self._event)

    def __iter__(self) -> Iterator[list[bytes]]:
        answer, event = self._answer, self._event
        gap = False
        while True:
            if self._next < answer.base:
                gap, self._next = True, answer.base
            end = answer.count
            if self._next < end:
                lines = answer.lines[self._next - answer.base : end - answer.base]
                self._next = end
                if gap:
                    lines[0], gap = mark_gap(lines[0]), False
                yield lines
                continue
            if answer.ended:
                return
            event.wait()  # no timer per wait: `publish()` wakes it, and `end()` publishes

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._answer._detach(self._event)


class LineLogs:
    """This process's answers (running, or ended within the keep time) and the shared store.

    A `/resume` that lands where its answer runs reads it from memory; anywhere else, from
    the store.
    """

    def __init__(self, store: LineStore | None, keep_seconds: float, keep_lines: int) -> None:
        self.store = store
        self.keep_seconds = keep_seconds
        self.keep_lines = keep_lines
        self._answers: dict[tuple[str, str], AnswerLog] = {}
        self._lock = threading.Lock()
        self._pruned = 0.0  # monotonic

    def start(self, user_id: str, chat_id: str) -> AnswerLog:
        """The log of a new answer of the chat (the user's lock is held: one at a time)."""
        shared = None
        if self.store is not None:
            try:
                shared = self.store.create(user_id, chat_id)
            except Exception:
                log.warning("answer log not shared (this worker only)", exc_info=True)
        answer = AnswerLog(shared, self.keep_lines)
        with self._lock:
            self._prune()
            self._answers[(user_id, chat_id)] = answer
        return answer

    def _local(self, user_id: str, chat_id: str) -> AnswerLog | None:
        with self._lock:
            self._prune()
            answer = self._answers.get((user_id, chat_id))
        if answer is not None and self._expired(answer, time.monotonic()):
            return None  # kept no longer, though not pruned yet
        return answer

    def _expired(self, answer: AnswerLog, now: float) -> bool:
        return answer.ended_at is not None and answer.ended_at < now - self.keep_seconds

    def _prune(self) -> None:
        """Forget answers ended more than the keep time ago: a pass over all of them, so at
        most once a second (a start or a look-up must not cost one per answer kept)."""
        now = time.monotonic()
        if now - self._pruned < PRUNE_SECONDS:
            return
        self._pruned = now
        expired = [key for key, a in self._answers.items() if self._expired(a, now)]
        for key in expired:
            del self._answers[key]

    def follow(self, user_id: str, chat_id: str, start: int) -> LineReader | None:
        """A reader of the chat's answer from line `start`; None: nothing to resume."""
        answer = self._local(user_id, chat_id)
        if answer is not None and not answer.ended:
            return answer.follow(start)
        if self.store is not None:  # it has the chat's latest answer, wherever it ran
            return self.store.follow(user_id, chat_id, start)
        return answer.follow(start) if answer is not None else None

    def generating(self, user_id: str, chat_id: str) -> bool:
        """True while the chat's answer is being produced, here or elsewhere."""
        answer = self._local(user_id, chat_id)
        if answer is not None and not answer.ended:
            return True
        return self.store is not None and self.store.generating(user_id, chat_id)

    def generating_chat(self, user_id: str) -> str | None:
        """The user's chat whose answer is being produced, here or elsewhere, or None."""
        with self._lock:
            for (user, chat), answer in self._answers.items():
                if user == user_id and not answer.ended:
                    return chat
        return self.store.generating_chat(user_id) if self.store is not None else None
