"""Run a tool in a real OS thread and stop waiting for it after a time limit.

A thread cannot be killed, so a tool that overruns keeps its thread until it returns: the
limit protects the request, and the built-in tools bound their own work to give threads back.
"""

import concurrent.futures
import logging
from collections.abc import Callable
from typing import TypeVar

import gevent

from ..greenlets import gevent_active

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TOOL_THREADS = 8

_executor = concurrent.futures.ThreadPoolExecutor(
    max_workers=MAX_TOOL_THREADS, thread_name_prefix="chatsite-tool"
)


class ToolTimeout(Exception):
    """The job did not finish within its time limit (it may still be running)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


def call_with_timeout(job: Callable[[], T], seconds: float) -> T:
    """Return `job()` run in an OS thread, or raise ToolTimeout after `seconds`."""
    if gevent_active():
        return _call_in_hub_threadpool(job, seconds)
    future = _executor.submit(job)
    done, _ = concurrent.futures.wait([future], timeout=seconds)
    if not done:
        if not future.cancel():
            log.warning("a tool thread is still running after %g s", seconds)
        raise ToolTimeout(seconds)
    return future.result()


def _call_in_hub_threadpool(job: Callable[[], T], seconds: float) -> T:
    """Wait on gevent's native thread pool without blocking the other greenlets.

    The limit also covers waiting for a free pool thread, since `spawn` blocks when all
    of them are busy.
    """
    deadline = gevent.Timeout(seconds)
    deadline.start()
    try:
        return gevent.get_hub().threadpool.spawn(job).get()
    except gevent.Timeout as exc:
        if exc is not deadline:
            raise
        log.warning("a tool thread is still running after %g s", seconds)
        raise ToolTimeout(seconds) from None
    finally:
        deadline.close()
