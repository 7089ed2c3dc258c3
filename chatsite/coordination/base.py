"""The coordination protocol: the per-user lock (429), instance slots (504), the line of
requests waiting for a model (FIFO, 503 when full) and stop requests (/stop)."""

import hashlib
import threading
from collections.abc import Callable
from typing import Protocol

from .signals import LocalSignals

USER_BUSY = "a request from this user is already being processed"


class UserBusy(Exception):
    """The user's lock is held by another request: one request per user at a time."""

    def __init__(self) -> None:
        super().__init__(USER_BUSY)


class Lease(Protocol):
    """Something held; `release()` is idempotent."""

    def release(self) -> None: ...


class Ticket(Protocol):
    """A request's place in the line of one model; `leave()` is idempotent."""

    def position(self) -> int:
        """Return the 1-based place among live waiters (1: next); prune dead ones ahead."""

    def wait(self, timeout: float) -> None:
        """Sleep until the line or a slot may have changed, `wake()`, or `timeout`."""

    def wake(self) -> None:
        """End a `wait()` now (a stop, from another greenlet or thread)."""

    def leave(self) -> None:
        """Leave the line and let those behind move up."""


class Coordinator(Protocol):
    """Hand out user locks and instance slots; keep the lines; carry stop requests."""

    def try_lock_user(self, user_id: str, chat_id: str | None = None) -> Lease | None:
        """Take the user's lock at once, or return None if it is held.

        `chat_id`: the chat the request writes (a /chat with `chatfile`), recorded with
        the lock for `generating_chat` until the lock is released.
        """

    def user_busy(self, user_id: str) -> bool:
        """Tell whether the user's lock is held anywhere (a request is in flight)."""

    def generating_chat(self, user_id: str) -> str | None:
        """The chat the user's request in flight writes, wherever it runs, or None."""

    def try_acquire_slot(self, instance: str, capacity: int) -> Lease | None:
        """Take one of the instance's `capacity` slots at once, or return None."""

    def slots_in_use(self, instance: str) -> int:
        """Count the instance's slots in use."""

    def waiting(self, model: str) -> int:
        """Count the requests in the model's line (0 when none; may count dead ones)."""

    def join_queue(self, model: str, limit: int) -> Ticket | None:
        """Join the end of the model's line, or return None if `limit` wait already."""

    def request_stop(self, user_id: str) -> None:
        """Ask whichever worker or host runs the user's request to stop it."""

    def watch_stop(self, user_id: str, callback: Callable[[], None]) -> Lease:
        """Call `callback` (in this process) when a stop is asked for the user."""


class EventTicket:
    """The waiting half of a ticket: an event of this process that wake-ups set."""

    def __init__(self, signals: LocalSignals) -> None:
        self._signals = signals
        self._event = signals.add_waiter()
        self._left = False
        self._guard = threading.Lock()

    def wait(self, timeout: float) -> None:
        """Sleep until woken or `timeout`; cooperative under gevent."""
        if timeout > 0:
            self._event.wait(timeout)
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    def leave(self) -> None:
        """Leave once: the subclass's `_leave()` runs a single time."""
        with self._guard:
            if self._left:
                return
            self._left = True
        self._signals.remove_waiter(self._event)
        self._leave()

    def _leave(self) -> None:
        raise NotImplementedError


def instance_key(instance: str) -> str:
    """Name an instance by a hash of its url: urls never become paths or keys themselves."""
    return hashlib.sha256(instance.encode()).hexdigest()[:16]


def model_key(model: str) -> str:
    """Name a model's line by a hash: model names never become paths or keys themselves."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]
