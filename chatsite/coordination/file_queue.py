"""The lines of waiting requests and the stop requests of one host, in the lock folder.

flock has no queue, so each model gets a folder of ticket files, one per waiting request,
named by the host's monotonic clock (arrival order) and the worker that waits. A waiter
holds an flock on its ticket for as long as it waits: the kernel drops it when the worker
dies, SIGKILL included, so a non-blocking probe tells a dead ticket from a live one, and
whoever finds a dead ticket removes it. The head of the line is the oldest live ticket.

Wake-ups are prompt: every worker has a mailbox, a Unix datagram socket (Linux abstract
namespace: no file, gone with the process) watched by one thread (a greenlet under gevent)
that passes each message to this process's `LocalSignals`. Releasing a slot or leaving a line
pokes the workers that have waiters; /stop pokes every worker, each registered by an
flock-held file in `workers/` (a dead worker's file is removed by the next sender).
"""

import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from .base import EventTicket, model_key
from .signals import LocalSignals

log = logging.getLogger(__name__)

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_PROBE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
LOCK_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # a non-blocking flock found it taken
WAKE = b"w"
STOP = b"s"
# A ticket's draft lives for a moment (created, locked, renamed): one this old that nobody
# holds was left by a worker that died in that moment. (Younger, it may not be locked yet.)
STALE_DRAFT_SECONDS = 60


def _locked_fd(path: str) -> int:
    """Open `path` and hold an exclusive flock on it."""
    fd = os.open(path, _OPEN_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_held(fd: int) -> bool:
    """Tell whether another open of the file holds its flock (its holder is alive: the
    kernel drops a dead process's locks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in LOCK_HELD:
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def holder_alive(path: str) -> bool:
    """Tell whether some process holds the file's flock; a missing file has no holder."""
    try:
        fd = os.open(path, _PROBE_FLAGS)
    except FileNotFoundError:
        return False
    try:
        return lock_held(fd)
    finally:
        os.close(fd)


def remove_unheld(
    root: str, cutoff: float, wanted: Callable[[str], bool] = lambda _name: True
) -> int:
    """Remove the files one folder below `root` (those whose name is `wanted`) that were
    last changed before `cutoff` (a wall-clock time) and whose flock nobody holds: what
    dead processes left. Return how many went."""
    removed = 0
    for entry in os.listdir(root):
        folder = os.path.join(root, entry)
        try:
            names = [name for name in os.listdir(folder) if wanted(name)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.stat(path).st_mtime < cutoff and not holder_alive(path):
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Mailbox:
    """This worker's datagram socket and the thread that delivers what arrives."""

    def __init__(self, workers_dir: str, namespace: str, signals: LocalSignals) -> None:
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._namespace = namespace
        self._signals = signals
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address(self.name))
        self._marker = _locked_fd(os.path.join(workers_dir, self.name))
        self._thread = threading.Thread(target=self._deliver, name="chatsite-mailbox", daemon=True)
        self._thread.start()

    def address(self, worker: str) -> str:
        return f"\0chatsite-{self._namespace}-{worker}"

    def _deliver(self) -> None:
        while True:
            try:
                message = self._socket.recv(512)
            except OSError:
                log.exception("mailbox closed")
                return
            try:
                if message == WAKE:
                    self._signals.wake_all()
                elif message.startswith(STOP):
                    self._signals.stop(message[1:].decode())
            except Exception:
                log.exception("could not deliver %r", message)


class FileQueue:
    """Per-model lines of ticket files, and the workers' mailboxes, under `lock_dir`."""

    def __init__(self, lock_dir: str, signals: LocalSignals) -> None:
        self.signals = signals
        self.root = os.path.join(lock_dir, "queue")
        self.workers_dir = os.path.join(lock_dir, "workers")
        for path in (self.root, self.workers_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._namespace = hashlib.sha256(os.path.abspath(lock_dir).encode()).hexdigest()[:16]
        self._mailbox: Mailbox | None = None
        self._mailbox_lock = threading.Lock()
        self._sender: socket.socket | None = None
        self._numbers = itertools.count()
        self.clean_stray_drafts()

    def clean_stray_drafts(self) -> int:
        """Remove the ticket drafts that dead workers left in the lines; return how many."""
        cutoff = time.time() - STALE_DRAFT_SECONDS
        removed = remove_unheld(self.root, cutoff, lambda name: name.startswith("."))
        if removed:
            log.info("removed %d stray ticket drafts", removed)
        return removed

    # -- this worker's mailbox, started on first use (after a fork: one per worker) --

    def mailbox(self) -> Mailbox:
        mailbox = self._mailbox
        if mailbox is None or not mailbox.name.startswith(f"{os.getpid()}-"):
            with self._mailbox_lock:
                mailbox = self._mailbox
                if mailbox is None or not mailbox.name.startswith(f"{os.getpid()}-"):
                    mailbox = self._mailbox = Mailbox(
                        self.workers_dir, self._namespace, self.signals
                    )
                    self._sender = None
        return mailbox

    def _send(self, worker: str, message: bytes) -> bool:
        """Post `message` to a worker's mailbox; False if no such worker listens."""
        mailbox = self.mailbox()
        if worker == mailbox.name:
            if message == WAKE:
                self.signals.wake_all()
            else:
                self.signals.stop(message[1:].decode())
            return True
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        try:
            self._sender.sendto(message, mailbox.address(worker))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            pass  # a full mailbox already holds a wake-up
        return True

    def send_wake(self, worker: str) -> bool:
        """Wake a worker's waiters; False if no such worker listens."""
        return self._send(worker, WAKE)

    # -- lines --

    def _line_dir(self, model: str) -> str:
        return os.path.join(self.root, model_key(model))

    def tickets(self, folder: str) -> list[str]:
        """The ticket names of a line, oldest first (dead ones included)."""
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if not name.startswith("."))

    def waiting(self, model: str) -> int:
        return len(self.tickets(self._line_dir(model)))

    def live(self, folder: str, names: list[str]) -> list[str]:
        """Keep the names whose waiter lives; remove the tickets of dead ones."""
        alive = []
        for name in names:
            path = os.path.join(folder, name)
            if holder_alive(path):
                alive.append(name)
            else:
                _unlink(path)
        return alive

    def join(self, model: str, limit: int) -> "FileTicket | None":
        """Add a ticket at the end of the model's line, or None when `limit` wait already."""
        folder = self._line_dir(model)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        names = self.tickets(folder)
        if len(names) >= limit and len(self.live(folder, names)) >= limit:
            return None
        worker = self.mailbox().name
        name = f"{time.monotonic_ns():020d}-{worker}-{next(self._numbers)}"
        # Locked before it appears under its name: a visible ticket is never mistaken for dead.
        draft = os.path.join(folder, f".{name}")
        fd = _locked_fd(draft)
        try:
            os.rename(draft, os.path.join(folder, name))
        except BaseException:
            os.close(fd)
            _unlink(draft)
            raise
        return FileTicket(self, folder, name, fd)

    def poke(self, folders: list[str] | None = None) -> None:
        """Wake the workers that have waiters in these lines (all lines by default)."""
        if folders is None:
            try:
                folders = [os.path.join(self.root, name) for name in os.listdir(self.root)]
            except FileNotFoundError:
                return
        # A ticket is named "<clock>-<worker>-<number>".
        names = [name for folder in folders for name in self.tickets(folder)]
        workers = {name.split("-", 1)[1].rsplit("-", 1)[0] for name in names}
        for worker in workers:
            self._send(worker, WAKE)

    # -- stop requests --

    def request_stop(self, user_id: str) -> None:
        """Post a stop for the user to every live worker of this host."""
        message = STOP + user_id.encode()
        for worker in os.listdir(self.workers_dir):
            if worker.startswith("."):
                continue
            if not self._send(worker, message):
                path = os.path.join(self.workers_dir, worker)
                if not holder_alive(path):
                    _unlink(path)


class FileTicket(EventTicket):
    """A ticket file held locked while its request waits."""

    def __init__(self, queue: FileQueue, folder: str, name: str, fd: int) -> None:
        super().__init__(queue.signals)
        self._queue = queue
        self._folder = folder
        self.name = name
        self._fd: int | None = fd

    def position(self) -> int:
        names = self._queue.tickets(self._folder)
        try:
            ahead = names[: names.index(self.name)]
        except ValueError:
            raise RuntimeError(f"ticket {self.name} vanished from its line") from None
        return len(self._queue.live(self._folder, ahead)) + 1

    def _leave(self) -> None:
        fd, self._fd = self._fd, None
        _unlink(os.path.join(self._folder, self.name))
        if fd is not None:
            os.close(fd)
        self._queue.poke([self._folder])
