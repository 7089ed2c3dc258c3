"""Whether gevent runs this process: streams and tools behave differently under it."""

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gevent import get_hub, getcurrent, monkey, spawn

T = TypeVar("T")


def gevent_active() -> bool:
    """True under a gevent worker, where threads, sockets and sleeps are greenlets."""
    return monkey.is_module_patched("threading")


def current_greenlet() -> Any:
    """The greenlet running the caller under gevent, else None."""
    return getcurrent() if gevent_active() else None


def off_the_loop(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (an fsync) without holding up the worker's other greenlets.

    Under gevent it runs in the hub's thread pool while this greenlet waits; elsewhere
    (the Flask dev server's threads) each request has its own thread: it runs here.
    """
    if gevent_active():
        return get_hub().threadpool.apply(function, args)
    return function(*args)


def run_apart(function: Callable[[], Any], name: str) -> None:
    """Run `function` beside the caller: a greenlet under gevent (a patched `Thread` costs
    several times more to start, which counts once per answer), else a daemon thread."""
    if gevent_active():
        spawn(function)
    else:
        threading.Thread(target=function, name=name, daemon=True).start()
