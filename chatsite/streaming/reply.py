"""Streamed NDJSON answers that always clean up after themselves.

Every status code is decided before the stream starts; after that, errors travel in-band
as a last `{"status": "error", ...}` line. The WSGI server calls `close()` on the body when
the response ends for any reason (done, error, client gone), and also when iteration never
started, so cleanup lives there rather than in a generator's `finally`.
"""

import contextlib
import logging
from collections.abc import Iterator

import gevent
import orjson
from flask import Response

from ..coordination import Lease
from ..greenlets import current_greenlet
from ..llm.client import InstanceStream
from ..llm.errors import InstanceError
from ..llm.pool import Slot
from . import drain

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


def ndjson_line(payload: dict) -> bytes:
    """Encode one stream line."""
    return orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)


NOT_SAVED = "the reply could not be saved to the chat"


def error_line(msg: str) -> bytes:
    """The last line of a stream that failed after it began."""
    return ndjson_line({"status": "error", "msg": msg, "done": True})


class StreamedReply:
    """Relay an upstream stream; subclasses yield the lines in `produce()`."""

    def __init__(self, slot: Slot, upstream: InstanceStream, user_lease: Lease) -> None:
        self.slot = slot
        self.upstream = upstream
        self.user_lease = user_lease
        self.pieces: list[str] = []
        self._finished = False
        self._greenlet = None
        self._body = self._lines()

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def produce(self) -> Iterator[bytes]:
        """Yield the stream's lines; call `finish(True)` before the final line."""
        raise NotImplementedError

    def on_finish(self, complete: bool) -> None:
        """Persist what the reply produced (the chat file), before locks are freed."""

    def _lines(self) -> Iterator[bytes]:
        self._greenlet = current_greenlet()
        drain.track(self)
        try:
            yield from self.produce()
        except InstanceError as error:
            log.warning("stream from %s failed: %s", self.slot.instance.url, error.msg)
            self.finish(complete=False)
            yield error_line(error.msg)
        except drain.Draining as error:
            self.finish(complete=False)
            yield error_line(str(error))
        except Exception:
            log.exception("stream failed")
            self.finish(complete=False)
            yield error_line("internal error")

    def finish(self, complete: bool) -> bool:
        """Close the upstream, save, release the slot and the user lock, once.

        Return False if the reply could not be saved.
        """
        if self._finished:
            return True
        self._finished = True
        drain.untrack(self)
        try:
            # First stop the GPU (a client that left must not keep it generating), then
            # save, and only then free the user: a next request then sees the saved chat.
            with contextlib.suppress(Exception):
                self.upstream.close()
            self.on_finish(complete)
        except Exception:
            log.exception("could not save the reply")
            return False
        finally:
            self.slot.release()
            self.user_lease.release()
        return True

    def interrupt(self, error: BaseException) -> None:
        """End the stream from outside (worker shutdown): raise `error` where it waits."""
        if self._greenlet is not None and not self._finished:
            gevent.kill(self._greenlet, error)  # asynchronous: never waits for it to die

    def close(self) -> None:
        """Called by the WSGI server when the response ends, however it ends."""
        try:
            self._body.close()
        finally:
            self.finish(complete=False)


def ndjson_response(reply: StreamedReply) -> Response:
    """Wrap a reply in a streamed response that nothing between us and the client buffers."""
    response = Response(reply, mimetype=NDJSON, direct_passthrough=True)
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["Cache-Control"] = "no-cache"
    return response
