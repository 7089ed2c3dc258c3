"""The coordination protocol: the per-user lock (429) and per-instance slots (504)."""

import hashlib
import time
from typing import Protocol

POLL_INTERVAL = 0.05  # longest sleep in poll_wait: file and Redis locks announce no release


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


def instance_key(instance: str) -> str:
    """Name an instance by a hash of its url: urls never become paths or keys themselves."""
    return hashlib.sha256(instance.encode()).hexdigest()[:16]


def poll_wait(timeout: float) -> None:
    """Sleep a little before polling again (cooperative under gevent)."""
    time.sleep(max(0.0, min(timeout, POLL_INTERVAL)))
