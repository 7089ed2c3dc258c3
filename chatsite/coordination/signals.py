"""What this process's waiters and streams listen to: wake-ups and requests to stop.

Each coordinator delivers the messages of its reach (another worker's poke through a
socket, another host's through Redis pub/sub) to one `LocalSignals` per process, which
hands them to the waiters and streams of this process.
"""

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class ReleaseOnce:
    """A lease whose `release()` runs its callback once: undo a registration, free a lock."""

    __slots__ = ("_undo",)

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Callable[[], None] | None = undo

    def release(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


class LocalSignals:
    """This process's waiters (woken on any change) and stop handlers (by user)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[threading.Event] = set()
        self._stops: dict[str, list[Callable[[], None]]] = {}

    def add_waiter(self) -> threading.Event:
        """Register an event that every `wake_all()` sets."""
        event = threading.Event()
        with self._lock:
            self._waiters.add(event)
        return event

    def remove_waiter(self, event: threading.Event) -> None:
        with self._lock:
            self._waiters.discard(event)

    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def wake_all(self) -> None:
        """Something may have changed: every waiter of this process looks again."""
        with self._lock:
            waiters = list(self._waiters)
        for event in waiters:
            event.set()

    def watch_stop(self, user_id: str, callback: Callable[[], None]) -> ReleaseOnce:
        """Call `callback` when a stop is asked for `user_id`, until released."""
        with self._lock:
            self._stops.setdefault(user_id, []).append(callback)

        def undo() -> None:
            with self._lock:
                callbacks = self._stops.get(user_id, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._stops.pop(user_id, None)

        return ReleaseOnce(undo)

    def stop(self, user_id: str) -> int:
        """Run the stop handlers of `user_id` in this process; return how many ran."""
        with self._lock:
            callbacks = list(self._stops.get(user_id, ()))
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("stop handler failed")
        return len(callbacks)
