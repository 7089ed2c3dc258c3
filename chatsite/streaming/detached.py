"""Answers that outlive their client: a `/chat` with a chatfile, produced in its own greenlet.

The producer (`DetachedAnswer.run`) drives the reply's records into the answer's log with
no WSGI response in sight: the original response and any `/resume` only read that log, and
closing one only detaches it. While it runs, the producer saves the answer so far (marked
incomplete) every `CHECKPOINT_SECONDS` and as soon as the last reader in its process has
left (a reloaded page reads the chat before it resumes), and stops it when nobody has read
it for `DETACHED_MAX_SECONDS`. A worker that is shutting down waits for its answers
(`wait_for`) until the drain ends them.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator

import orjson

from ..greenlets import run_apart
from .linelog import LOST, LineReader, ProducerLost
from .linelog.answers import AnswerLog
from .reply import StreamedReply, error_line

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 5.0
LOOK_SECONDS = 1.0  # how often the producer asks whether anyone still reads

_running: set["DetachedAnswer"] = set()
_running_lock = threading.Lock()


class DetachedAnswer:
    """Run a reply into its answer's log, whoever reads it."""

    def __init__(self, reply: StreamedReply, answer: AnswerLog, detached_max: float) -> None:
        self.reply = reply
        self.answer = answer
        self.detached_max = detached_max
        # Waiting in line inside the stream, the request leaves it once nobody reads.
        reply.client_gone = self.unread_too_long

    def unread_too_long(self) -> bool:
        return self.answer.unread_seconds() >= self.detached_max

    def start(self) -> None:
        """Run the producer in a greenlet (a thread outside gevent) of its own."""
        with _running_lock:
            _running.add(self)
        run_apart(self.run, "chatsite-answer")

    def run(self) -> None:
        reply, answer = self.reply, self.answer
        encode, append = reply.encode, answer.append
        look = saved = time.monotonic()  # `saved`: the last checkpoint (none yet: the start)
        try:
            for item in reply.lines:
                if type(item) is dict:
                    append(encode(item))
                else:
                    for record in item:
                        append(encode(record))
                answer.publish()
                now = time.monotonic()
                # The last reader here left (a reload, a lost connection): save the chat so
                # far now, for the /get-chat that comes before the /resume (at most once a
                # second: a client that keeps reconnecting does not make a save of each).
                if answer.left and now - saved >= LOOK_SECONDS and self._checkpoint():
                    answer.left = False
                    saved = now
                if now >= look:
                    look = now + LOOK_SECONDS
                    if self.unread_too_long() and not reply.stopped:
                        log.info("nobody read an answer for %.0f s: stopped", self.detached_max)
                        reply.stop()
                    if now - saved >= CHECKPOINT_SECONDS and self._checkpoint():
                        saved = now
        except BaseException as error:  # a drain landing outside the reply's own handling
            reply.lines.close()
            reply.finish(complete=False)
            if not answer.ended:
                append(encode(reply.ending(error_line(str(error) or "internal error"))))
            if isinstance(error, Exception):
                log.exception("an answer's producer failed")
        finally:
            try:
                if not answer.ended:
                    answer.end()
                reply.let_go()
            finally:
                with _running_lock:
                    _running.discard(self)

    def _checkpoint(self) -> bool:
        try:
            return self.reply.checkpoint()
        except Exception:
            log.warning("could not save a checkpoint of an answer", exc_info=True)
            return True  # tried: the next one in CHECKPOINT_SECONDS


class FollowedAnswer:
    """The WSGI body of a reader of an answer's log: `close()` only detaches it."""

    def __init__(self, reader: LineReader, start: int = 0) -> None:
        self.reader = reader
        self.start = start

    def __iter__(self) -> Iterator[bytes]:
        last = None
        try:
            for lines in self.reader:
                last = lines[-1]
                yield lines[0] if len(lines) == 1 else b"".join(lines)
        except ProducerLost:
            yield lost_line(last, self.start)

    def close(self) -> None:
        self.reader.close()


def lost_line(last: bytes | None, start: int) -> bytes:
    """The error line a reader ends with when the producer died, numbered after `last`."""
    seq = orjson.loads(last)["seq"] + 1 if last is not None else start
    record = {**error_line(LOST), "seq": seq}
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def running() -> int:
    """How many answers this process is producing."""
    with _running_lock:
        return len(_running)


def wait_for(timeout: float, tick: Callable[[], None]) -> None:
    """Wait (calling `tick` every second) until this process produces no answer, or
    `timeout`: a shutting-down worker keeps its answers' producers alive for the drain."""
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        tick()
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
