"""User locks and instance slots shared by all workers of one host, through `flock`.

No server: each lock is an exclusive, non-blocking `flock` on a file in the lock folder. A
flock belongs to the open file description, so two opens of one file conflict even inside one
process (greenlets of a worker exclude each other), and the kernel drops the locks of a process
the moment it dies, SIGKILL included: nothing ever goes stale.

Lock files are never deleted: unlinking a file while another process holds or is about to
lock it would let two holders lock two different inodes under the same name. The lines of
waiting requests and stop requests live in `file_queue`.
"""

import fcntl
import logging
import os
import random
import re
import threading
from collections.abc import Callable

from ..ids import canonical_uuid
from .base import Lease, instance_key
from .file_queue import LOCK_HELD, FileQueue, FileTicket, holder_alive
from .signals import LocalSignals

log = logging.getLogger(__name__)

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


NOTE_SIZE = 36  # a user's lock file says which chat its holder writes: a canonical uuid


class FileLease:
    """An flock held through an open descriptor; `release()` unlocks and closes it once."""

    __slots__ = ("_after", "_fd", "_guard")

    def __init__(self, fd: int, after: Callable[[], None] | None = None) -> None:
        self._fd: int | None = fd
        self._guard = threading.Lock()  # a second close could hit a reused descriptor number
        self._after = after

    def release(self) -> None:
        """Unlock and close; later calls do nothing."""
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            if self._after is not None:
                self._after()


class FileCoordinator:
    """flock-based locks under `lock_dir`: right for all gunicorn workers of one host."""

    def __init__(self, lock_dir: str | os.PathLike) -> None:
        self.lock_dir = os.path.abspath(lock_dir)
        self._users_dir = os.path.join(self.lock_dir, "users")
        self._slots_dir = os.path.join(self.lock_dir, "slots")
        for path in (self.lock_dir, self._users_dir, self._slots_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._capacity: dict[str, int] = {}  # largest capacity seen per instance url
        # Slots this process released lately: their files exist and are probably free, so
        # trying them first saves creating new slot files and probing busy ones.
        self._released: dict[str, list[int]] = {}
        self.signals = LocalSignals()
        self._queue = FileQueue(self.lock_dir, self.signals)

    def _try_lock(
        self, path: str, after: Callable[[], None] | None = None, note: bytes | None = None
    ) -> Lease | None:
        """Lock `path` at once, or return None if someone (even this process) holds it.

        `note`: what the file says while it is held, padded with spaces to NOTE_SIZE bytes
        and overwritten in place by the next holder (truncating it to empty it again cost
        the filesystem a block freed and allocated per request); it means something only
        while the file is held.
        """
        fd = os.open(path, _OPEN_FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if note is not None:
                os.pwrite(fd, note.ljust(NOTE_SIZE), 0)
        except OSError as error:
            os.close(fd)
            if error.errno in LOCK_HELD:
                return None
            raise
        except BaseException:
            os.close(fd)
            raise
        return FileLease(fd, after)

    def _user_path(self, user_id: str) -> str:
        return os.path.join(self._users_dir, f"{canonical_uuid(user_id)}.lock")

    def try_lock_user(self, user_id: str, chat_id: str | None = None) -> Lease | None:
        """Take the user's lock at once, or None if any worker of this host holds it.

        The lock file holds the chat the request writes (blank: none) while it is held.
        """
        note = canonical_uuid(chat_id).encode() if chat_id is not None else b""
        return self._try_lock(self._user_path(user_id), note=note)

    def user_busy(self, user_id: str) -> bool:
        """Tell whether a worker of this host holds the user's lock."""
        return holder_alive(self._user_path(user_id))

    def generating_chat(self, user_id: str) -> str | None:
        """The chat written by the request holding the user's lock on this host, or None."""
        path = self._user_path(user_id)
        if not holder_alive(path):
            return None
        try:
            with open(path, "rb") as handle:
                text = handle.read(NOTE_SIZE).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        return text or None

    def _slot_path(self, instance: str, index: int) -> str:
        return os.path.join(self._slots_dir, f"{instance_key(instance)}.{index}.lock")

    def try_acquire_slot(self, instance: str, capacity: int) -> Lease | None:
        """Take a free slot file of the instance, starting at a random one to spread contention."""
        if capacity > self._capacity.get(instance, 0):
            self._capacity[instance] = capacity
        if capacity <= 0:
            return None
        released = self._released.get(instance)
        if released is None:
            # A new process (a restart, a recycled worker) tries the slot files that exist
            # first, in random order: creating a file costs the filesystem far more (an
            # inode, ~0.7 ms of CPU on ext4) than probing one that another worker holds.
            released = self._released[instance] = self._slot_files(instance)
            random.shuffle(released)
        while released:
            index = released.pop()
            if index < capacity and (lease := self._try_slot(instance, index)) is not None:
                return lease
        start = random.randrange(capacity)
        for step in range(capacity):
            lease = self._try_slot(instance, (start + step) % capacity)
            if lease is not None:
                return lease
        return None

    def _try_slot(self, instance: str, index: int) -> Lease | None:
        released = self._released.setdefault(instance, [])

        def remember() -> None:
            released.append(index)
            self._queue.poke()

        return self._try_lock(self._slot_path(instance, index), remember)

    def _slot_indexes(self, instance: str) -> range | list[int]:
        """Slots to look at: up to the largest capacity seen, else the files that exist."""
        capacity = self._capacity.get(instance)
        if capacity is not None:
            return range(capacity)
        return self._slot_files(instance)

    def _slot_files(self, instance: str) -> list[int]:
        """The indexes of the instance's slot files that exist."""
        pattern = re.compile(re.escape(instance_key(instance)) + r"\.(\d+)\.lock")
        try:
            names = os.listdir(self._slots_dir)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for m in map(pattern.fullmatch, names) if m]

    def slots_in_use(self, instance: str) -> int:
        """Count the instance's slot files locked by any process of this host."""
        indexes = self._slot_indexes(instance)
        # A probe makes the slot look busy for an instant to a concurrent try_acquire_slot,
        # which then tries the next slot or waits one step: harmless.
        return sum(holder_alive(self._slot_path(instance, i)) for i in indexes)

    def waiting(self, model: str) -> int:
        """Count the tickets in the model's line (a dead one counts until someone probes)."""
        return self._queue.waiting(model)

    def join_queue(self, model: str, limit: int) -> FileTicket | None:
        """Take a ticket at the end of the model's line, or None when `limit` are waiting."""
        return self._queue.join(model, limit)

    def request_stop(self, user_id: str) -> None:
        """Ask every worker of this host to stop the user's request."""
        self._queue.request_stop(canonical_uuid(user_id))

    def watch_stop(self, user_id: str, callback: Callable[[], None]) -> Lease:
        """Run `callback` when any worker asks to stop the user's request."""
        self._queue.mailbox()  # stop requests arrive there
        return self.signals.watch_stop(canonical_uuid(user_id), callback)

    def mailbox_name(self) -> str:
        """This worker's mailbox: what `wake_worker` reaches (answer logs' readers use it)."""
        return self._queue.mailbox().name

    def wake_worker(self, worker: str) -> bool:
        """Wake the waiters of one worker of this host; False if no such worker listens."""
        return self._queue.send_wake(worker)
