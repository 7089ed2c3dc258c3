"""Graceful shutdown: let running streams finish, then cut them cleanly and save them.

gunicorn gives a worker `graceful_timeout` seconds after SIGTERM (or after it reached
`max_requests` and stopped accepting) before it kills it. The gunicorn config calls
`begin_drain()` with a little less than that; streams still running
when it expires are interrupted with `Draining`, which ends them like an upstream error:
the partial reply is saved as incomplete and every lock and slot is released, while the
worker is still alive to do it. A tool running at that moment has its process killed.
"""

import logging
import threading
import weakref
from typing import Protocol

log = logging.getLogger(__name__)


class Draining(BaseException):
    """The worker is shutting down and cannot wait for this stream any longer.

    A BaseException, like GreenletExit: code that turns an Exception into an error result
    (a tool call) must not swallow it, or the stream would go on until the worker is killed.
    """


class Interruptible(Protocol):
    def interrupt(self, error: BaseException) -> None: ...


_active: "weakref.WeakSet[Interruptible]" = weakref.WeakSet()
_lock = threading.Lock()


def track(reply: Interruptible) -> None:
    """Remember a running stream so that a drain can end it."""
    with _lock:
        _active.add(reply)


def untrack(reply: Interruptible) -> None:
    """Forget a finished stream."""
    with _lock:
        _active.discard(reply)


def running() -> int:
    """Count the streams still running in this process."""
    with _lock:
        return len(_active)


def interrupt_all() -> int:
    """End every running stream now; return how many were ended."""
    with _lock:
        replies = list(_active)
    for reply in replies:
        reply.interrupt(Draining("the server is restarting; please retry"))
    if replies:
        log.warning("interrupted %d running streams at shutdown", len(replies))
    return len(replies)


_draining = threading.Event()


def begin_drain(grace: float) -> None:
    """Give running streams `grace` seconds, then interrupt the rest (once per process:
    a SIGTERM and a worker's own recycling may both ask)."""
    with _lock:
        if _draining.is_set():
            return
        _draining.set()
    log.info("draining: %d streams running, %.0f s to finish", running(), grace)
    timer = threading.Timer(grace, interrupt_all)
    timer.daemon = True
    timer.start()
