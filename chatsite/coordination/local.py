"""In-process locks and slots: one process only (the dev server, one worker)."""

import threading
from collections.abc import Callable

from .base import Lease


class _Release:
    """A lease that runs its release callback once."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback

    def release(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class LocalCoordinator:
    """In-process locks and slots: right for one process (the dev server, one worker)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._users: set[str] = set()
        self._slots: dict[str, int] = {}

    def try_lock_user(self, user_id: str) -> Lease | None:
        with self._changed:
            if user_id in self._users:
                return None
            self._users.add(user_id)
        return _Release(lambda: self._unlock_user(user_id))

    def _unlock_user(self, user_id: str) -> None:
        with self._changed:
            self._users.discard(user_id)

    def try_acquire_slot(self, instance: str, capacity: int) -> Lease | None:
        with self._changed:
            if self._slots.get(instance, 0) >= capacity:
                return None
            self._slots[instance] = self._slots.get(instance, 0) + 1
        return _Release(lambda: self._release_slot(instance))

    def _release_slot(self, instance: str) -> None:
        with self._changed:
            self._slots[instance] -= 1
            self._changed.notify_all()

    def slots_in_use(self, instance: str) -> int:
        return self._slots.get(instance, 0)

    def wait_for_release(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)
