"""Streamed NDJSON answers that always clean up after themselves.

Every status code is decided before the stream starts; after that, errors travel in-band
as a last `{"status": "error", ...}` line. The WSGI server calls `close()` on the body when
the response ends for any reason (done, error, client gone), and also when iteration never
started, so cleanup lives there rather than in a generator's `finally`.

A reply is a producer: `records()` yields its lines as single records (dicts), or lists
of them (the pieces of one upstream read, sent in one write); `encode()` numbers and encodes
each. Iterated directly (`__iter__`) it is the WSGI body of a request that ends with its
client; a `/chat` with a chatfile runs it in a greenlet of its own instead
(`streaming.detached`), and its responses only read the answer's log.

A request that waits in line with `queue_updates` starts its stream at once with `queued`
lines. /stop ends a reply from outside (`stop()`): its last line is the ordinary one plus
`"stopped": true`. A reply whose save waits in the journal (the database is away) says so
on its last line, whatever that line is: `"saved": "pending"`.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator

import gevent
import orjson
from flask import Response

from ..coordination import Lease
from ..greenlets import current_greenlet
from ..llm.client import InstanceStream
from ..llm.errors import (
    InstanceError,
    InstanceFailed,
    InstanceMisconfigured,
    InstanceRefused,
    NoInstanceAvailable,
    QueueFull,
    UnknownModel,
)
from ..llm.pool import Admission, Slot
from ..media import NDJSON
from ..operations.metrics import StreamWatch
from . import drain

log = logging.getLogger(__name__)

QUEUE_UPDATE_SECONDS = 5.0  # a queued line at least this often: it also finds clients gone
WAIT_ERRORS = (
    NoInstanceAvailable,
    QueueFull,
    UnknownModel,
    InstanceFailed,
    InstanceRefused,
    InstanceMisconfigured,
)


def ndjson_line(payload: dict) -> bytes:
    """Encode one stream line."""
    return orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)


NOT_SAVED = "the reply could not be saved to the chat"


def error_line(msg: str) -> dict:
    """The last line of a stream that failed after it began."""
    return {"status": "error", "msg": msg, "done": True}


def queued_line(position: int) -> dict:
    """Tell a waiting client its place in line (1 = next)."""
    return {"status": "queued", "position": position, "done": False}


class Stopped(Exception):
    """The user asked /stop for this request before it reached an instance."""


class ClientGone(Exception):
    """The client left while its request waited in line."""


class StreamedReply:
    """Relay an upstream stream; subclasses yield the lines in `produce()`."""

    numbered = False  # each line carries its "seq" (a /chat stream's lines)

    def __init__(self, admission: Admission, user_lease: Lease) -> None:
        self.admission = admission
        self.user_lease = user_lease
        self.slot: Slot | None = None
        self._upstream: InstanceStream | None = None
        self.pieces: list[str] = []
        self.thinking_pieces = 0  # relayed pieces of thinking (counted, not kept here)
        self.stopped = False
        self.save_pending = False  # set by `on_finish` when the save was journaled
        self.stop_watch: Lease | None = None
        self.client_gone: Callable[[], bool] = lambda: False
        self._queued: tuple[Generator[int, None, None], int] | None = None
        self._relaying = False
        self._finished = False
        self._greenlet = None
        self.seq = 0  # the next line's number
        self.lines = self.records()
        self._body = self._batches()
        self.watch = StreamWatch(admission.model)  # metrics and the request's log line
        admission.giving_up = lambda: self.stopped or self.client_gone()

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    @property
    def upstream(self) -> InstanceStream | None:
        return self._upstream

    @upstream.setter
    def upstream(self, stream: InstanceStream | None) -> None:
        # A stream opened after a stop (the next tool round) ends at its first piece.
        self._upstream = stream
        if self.stopped and stream is not None:
            stream.cancel()

    def produce(self) -> Iterator[dict | list[dict]]:
        """Yield the stream's lines (records, or lists of them sent together); call
        `finish(True)` before the final line."""
        raise NotImplementedError

    def encode(self, record: dict) -> bytes:
        """One stream line, numbered when the stream's lines are."""
        if self.numbered:
            record["seq"] = self.seq
            self.seq += 1
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    def _batches(self) -> Iterator[bytes]:
        """The WSGI body of a reply that ends with its client: each yield is one write."""
        encode = self.encode
        for item in self.lines:
            if type(item) is dict:
                yield encode(item)
            else:
                yield b"".join(map(encode, item))

    def last_line(self) -> dict:
        """The ordinary last line, with what was produced so far."""
        raise NotImplementedError

    def on_finish(self, complete: bool) -> None:
        """Persist what the reply produced (the chat file), before locks are freed."""

    def ending(self, line: dict) -> dict:
        """The stream's last line, telling of a save kept for later if there is one."""
        return {**line, "saved": "pending"} if self.save_pending else line

    def _error_line(self, msg: str) -> dict:
        return self.ending(error_line(msg))

    # -- admission: at once, waiting here, or waiting in the stream --

    def admitted(self) -> None:
        """Take over the slot and stream the admission opened."""
        self.slot, self.upstream = self.admission.slot, self.admission.upstream
        self.watch.relaying(self.slot.instance.url, self.slot.waited)

    def wait_here(self, steps: Generator[int, None, None]) -> None:
        """Wait in line before the response starts (no `queue_updates`)."""
        for _position in self._places(steps):
            pass
        if not self.stopped:
            self.admitted()

    def wait_in_stream(self, steps: Generator[int, None, None], position: int) -> None:
        """Wait in line inside the stream, reporting the place (`queue_updates`)."""
        self._queued = (steps, position)

    def _wait_in_line(self) -> Iterator[dict]:
        steps, last = self._queued
        yield queued_line(last)
        sent = time.monotonic()
        for position in self._places(steps):
            if position != last or time.monotonic() - sent >= QUEUE_UPDATE_SECONDS:
                yield queued_line(position)
                last, sent = position, time.monotonic()
        if not self.stopped:
            self.admitted()

    def _places(self, steps: Generator[int, None, None]) -> Iterator[int]:
        """The request's places in line while it still wants one (ClientGone if it left)."""
        for position in steps:
            if self.stopped:
                steps.close()
                return
            if self.client_gone():
                steps.close()
                raise ClientGone()
            yield position

    # -- the stream --

    def records(self) -> Iterator[dict | list[dict]]:
        """The stream's lines, whatever happens: waiting, relaying, and its last line."""
        self._greenlet = current_greenlet()
        drain.track(self)
        try:
            if self._queued is not None:
                yield from self._wait_in_line()
            if self.stopped:
                raise Stopped()
            self._relaying = True
            with contextlib.closing(self.produce()) as lines:
                for line in lines:
                    self.watch.first_line()  # once per stream, never per chunk
                    yield line
                    break
                yield from lines
        except Stopped:
            yield from self._end_stopped()
        except InstanceError as error:
            if self.stopped:
                yield from self._end_stopped()
                return
            log.warning("stream from %s failed: %s", self.slot.instance.url, error.detail)
            self.finish(complete=False)
            yield self._error_line(error.msg)
        except WAIT_ERRORS as error:
            self.finish(complete=False)
            yield self._error_line(str(error))
        except ClientGone:
            self.finish(complete=False)
        except drain.Draining as error:
            self.finish(complete=False)
            yield self._error_line(str(error))
        except Exception:
            log.exception("stream failed")
            self.finish(complete=False)
            yield self._error_line("internal error")

    def _end_stopped(self) -> Iterator[dict]:
        saved = self.finish(complete=False)
        yield self.ending({**self.last_line(), "stopped": True})
        if not saved:
            log.warning("a stopped reply could not be saved")

    def stop(self) -> None:
        """End the request from outside (/stop): waiting, it leaves; streaming, it ends.

        The upstream read then fails where it waits, and the stream ends with its last line
        (rather than an exception thrown into the greenlet, which could land mid-write).
        """
        if self._finished or self.stopped:
            return
        self.stopped = True
        self.admission.wake()
        upstream = self._upstream
        if not self._relaying or upstream is None:
            return
        upstream.cancel()
        if self._greenlet is not None:
            # Under gevent, closing wakes the greenlet reading it at once; a thread blocked
            # in a read is not woken by a close, so there the next piece ends it.
            with contextlib.suppress(Exception):
                upstream.close()

    def finish(self, complete: bool) -> bool:
        """Close the upstream, save, release the slot and the user lock, once.

        Nothing is saved for a request that never reached an instance. Return False if the
        reply could not be saved.
        """
        if self._finished:
            return True
        self._finished = True
        self._relaying = False
        drain.untrack(self)
        # Chunks are counted per stream, and added once.
        self.watch.finished(len(self.pieces), complete, self.thinking_pieces)
        try:
            # First stop the GPU (a client that left must not keep it generating), then
            # save, and only then free the user: a next request then sees the saved chat.
            # A finished answer's connection is left open for `close()` to release.
            if self.upstream is not None:
                with contextlib.suppress(Exception):
                    self.upstream.close()
                self.on_finish(complete)
        except Exception:
            log.exception("could not save the reply")
            return False
        finally:
            self.release()
        return True

    def release(self) -> None:
        """Give back the place in line, the slot, the stop watch and the user's lock."""
        self._finished = True
        drain.untrack(self)
        # Once: a no-op after finish().
        self.watch.finished(len(self.pieces), False, self.thinking_pieces)
        try:
            self.admission.close()
        finally:
            if self.stop_watch is not None:
                self.stop_watch.release()
            self.user_lease.release()

    def interrupt(self, error: BaseException) -> None:
        """End the stream from outside (worker shutdown): raise `error` where it waits."""
        if self._greenlet is not None and not self._finished:
            gevent.kill(self._greenlet, error)  # asynchronous: never waits for it to die

    def close(self) -> None:
        """Called by the WSGI server when the response ends, however it ends.

        The client has its last line by now: only then may a finished upstream answer
        take a moment to end its body, so its connection can be reused.
        """
        try:
            self._body.close()
        finally:
            self.let_go()

    def let_go(self) -> None:
        """After the last line: end it all (a no-op once finished) and free the connection."""
        self.finish(complete=False)
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.release()

    def checkpoint(self) -> bool:
        """Save the answer so far, if it is saved at all; False when there is nothing yet."""
        return False


def ndjson_response(body: Iterable[bytes]) -> Response:
    """Wrap a body (a reply, a reader) in a streamed response that nothing buffers."""
    response = Response(body, mimetype=NDJSON, direct_passthrough=True)
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["Cache-Control"] = "no-cache"
    return response
