"""Who may use what right now: the per-user lock (429) and per-instance slots (504).

Everything behind `Coordinator` so that the in-process version used here can be swapped
for one shared by all workers of a host, or by all hosts.
"""

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Lease(Protocol):
    """Something held; `release()` is idempotent."""

    def release(self) -> None: ...


class Coordinator(Protocol):
    """Hand out user locks and instance slots."""

    def try_lock_user(self, user_id: str) -> Lease | None:
        """Take the user's lock at once, or return None if it is held."""

    def try_acquire_slot(self, instance: str, capacity: int) -> Lease | None:
        """Take one of the instance's `capacity` slots at once, or return None."""

    def slots_in_use(self, instance: str) -> int:
        """Count the instance's slots in use."""

    def wait_for_release(self, timeout: float) -> None:
        """Sleep until something may have been released, at most `timeout` seconds."""


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


def make_coordinator(config: dict) -> Coordinator:
    """Pick the coordination that spans what the deployment needs.

    Redis when `REDIS_URL` is set (several hosts); else file locks in the instance folder
    (all workers of one host); `COORDINATION = "local"` keeps it inside one process.
    """
    if config.get("REDIS_URL"):
        from .coordination_redis import RedisCoordinator

        return RedisCoordinator(
            config["REDIS_URL"], prefix=config["REDIS_PREFIX"], ttl=float(config["LEASE_TTL"])
        )
    if config.get("COORDINATION") == "local":
        return LocalCoordinator()
    from .coordination_files import FileCoordinator

    return FileCoordinator(config["LOCK_DIR"])
