"""Whether gevent runs this process: streams and tools behave differently under it."""

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gevent import get_hub, getcurrent, monkey, spawn
from gevent.hub import Waiter

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


class WakeUp:
    """Wake one waiting reader from the greenlet (or thread) that has news for it.

    `wait()` returns once `set()` was called since the last `wait()` returned. Under
    gevent a wake-up is a hub callback into a `Waiter` (half what an `Event` costs, which
    counts once per streamed line); elsewhere it is a `threading.Event`.
    """

    def __init__(self) -> None:
        self._hub = get_hub() if gevent_active() else None
        self._event = threading.Event() if self._hub is None else None
        self._waiter: Waiter | None = None
        self._pending = False

    def set(self) -> None:
        if self._event is not None:
            self._event.set()
            return
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            self._pending = True
        else:
            self._hub.loop.run_callback(waiter.switch, None)

    def wait(self) -> None:
        if self._event is not None:
            self._event.wait()
            self._event.clear()
            return
        if self._pending:
            self._pending = False
            return
        waiter = self._waiter = Waiter(self._hub)
        try:
            waiter.get()
        finally:
            self._waiter = None
            self._pending = False
