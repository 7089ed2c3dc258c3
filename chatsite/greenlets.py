"""Whether gevent runs this process: streams and tools behave differently under it."""

from typing import Any

from gevent import getcurrent, monkey


def gevent_active() -> bool:
    """True under a gevent worker, where threads, sockets and sleeps are greenlets."""
    return monkey.is_module_patched("threading")


def current_greenlet() -> Any:
    """The greenlet running the caller under gevent, else None."""
    return getcurrent() if gevent_active() else None
