"""Answers' logs shared by the workers of one host: a file per answer in the lock folder.

`answers/<user uuid>/<chat uuid>.ndjson` holds the answer's lines as they were sent, one
per line, and a blank line after the last one. Its producer holds an flock on it for as
long as it writes, so the kernel tells a running answer from one whose worker was killed
(SIGKILL included): no last line and nobody holding the file is `ProducerLost`. A new
answer of the chat empties and reuses the file when nobody reads the old one (a new inode
per answer cost more CPU than the answer's relay), else replaces it by a rename: a reader
of the old one keeps its own.

A reader holds an flock on a marker file `<chat>.r.<worker>.<n>` beside it while it
follows: the producer counts them (someone is reading) and wakes their workers after each
batch through the file coordination's mailboxes. Files are removed once the keep time has
passed since their answer ended (or since a dead producer last wrote).
"""

import contextlib
import fcntl
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from ...coordination.file_queue import holder_alive, lock_held, remove_unheld
from ...ids import canonical_uuid
from .base import FOLLOW_POLL_SECONDS, ProducerLost, mark_gap

log = logging.getLogger(__name__)

END = b"\n"  # a blank line: the answer's last line is in
SUFFIX = ".ndjson"
READER = ".r."
READ_CHUNK = 1 << 16


class FileSharedLog:
    """The producer's end of one answer's file (the flock held until `close`)."""

    def __init__(self, store: "FileLineStore", folder: str, chat: str, fd: int) -> None:
        self._store = store
        self._folder = folder
        self._chat = chat
        self._fd: int | None = fd

    # The writes go to the page cache and are never synced (the file lives for minutes, a
    # crash loses it by design): inline, an append costs microseconds, where a hand-off to
    # the thread pool, per answer every FLUSH_SECONDS, cost most of the worker's time.
    def write(self, lines: list[bytes], first: int) -> int:
        os.write(self._fd, b"".join(lines))
        return self._store.wake_readers(self._folder, self._chat)

    def end(self) -> None:
        os.write(self._fd, END)
        self._store.wake_readers(self._folder, self._chat)

    def readers(self) -> int:
        return len(self._store.reader_markers(self._folder, self._chat, live=True))

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the flock goes with it


class FileReader:
    """Follow an answer's file from a line on, woken by the producer's worker."""

    def __init__(
        self, store: "FileLineStore", fd: int, marker: tuple[int, str], start: int
    ) -> None:
        self._store = store
        self._fd = fd
        self._marker: tuple[int, str] | None = marker
        self._start = max(0, start)
        self._event = store.signals.add_waiter() if store.signals is not None else None

    def __iter__(self) -> Iterator[list[bytes]]:
        offset, seq, rest, first = 0, 0, b"", None
        while True:
            if self._event is not None:
                self._event.clear()
            alive = lock_held(self._fd)  # before reading: a last write is then seen
            data = self._read(offset)
            offset += len(data)
            parts = (rest + data).split(b"\n")
            rest = parts.pop()
            if first is None:  # the first look: the oldest line kept for this reader
                written = parts.index(b"") if b"" in parts else len(parts)
                first = max(self._start, written - self._store.keep_lines)
            out: list[bytes] = []
            ended = False
            for part in parts:
                if not part:
                    ended = True
                    break
                if seq >= first:
                    out.append(part + b"\n")
                seq += 1
            if out:
                if first > self._start and seq - len(out) == first:
                    out[0] = mark_gap(out[0])
                yield out
            if ended:
                return
            if not alive:
                raise ProducerLost()
            if self._event is not None:
                self._event.wait(FOLLOW_POLL_SECONDS)
            else:
                time.sleep(FOLLOW_POLL_SECONDS)

    def _read(self, offset: int) -> bytes:
        chunks = []
        while chunk := os.pread(self._fd, READ_CHUNK, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        marker, self._marker = self._marker, None
        if marker is None:
            return
        if self._event is not None:
            self._store.signals.remove_waiter(self._event)
        fd, path = marker
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        os.close(self._fd)


class FileLineStore:
    """Answers' logs under `<lock_dir>/answers`, woken through the file coordination."""

    def __init__(
        self, lock_dir: str | os.PathLike, coordinator: Any, keep_seconds: float, keep_lines: int
    ) -> None:
        self.root = os.path.join(os.path.abspath(lock_dir), "answers")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.keep_seconds = keep_seconds
        self.keep_lines = keep_lines
        # The file coordination's mailboxes carry wake-ups; with another, readers look anew
        # every FOLLOW_POLL_SECONDS.
        self._coordinator = coordinator if hasattr(coordinator, "wake_worker") else None
        self.signals = getattr(self._coordinator, "signals", None)
        self._numbers = itertools.count()
        self._swept = 0.0
        self._sweep_lock = threading.Lock()

    def _folder(self, user_id: str) -> str:
        return os.path.join(self.root, canonical_uuid(user_id))

    def _path(self, user_id: str, chat_id: str) -> str:
        return os.path.join(self._folder(user_id), canonical_uuid(chat_id) + SUFFIX)

    # -- the producer --

    def create(self, user_id: str, chat_id: str) -> FileSharedLog:
        self._sweep_now_and_then()
        folder = self._folder(user_id)
        chat = canonical_uuid(chat_id)
        path = os.path.join(folder, chat + SUFFIX)
        fd = self._reuse(path, folder, chat)
        if fd is not None:
            return FileSharedLog(self, folder, chat, fd)
        draft = os.path.join(folder, f".{chat}.{secrets.token_hex(4)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(draft, flags, 0o600)
        except FileNotFoundError:  # the user's first answer here (asked first: cheaper)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd = os.open(draft, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Held before it appears under its name: a visible log is never mistaken for lost.
            os.rename(draft, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(draft)
            raise
        return FileSharedLog(self, folder, chat, fd)

    def _reuse(self, path: str, folder: str, chat: str) -> int | None:
        """The chat's previous answer file, emptied for the new answer, if nobody reads it.

        A new file costs the filesystem an inode (about 0.7 ms of CPU on this project's
        ext4, per answer); the previous answer ended (the user's lock is held now), and
        with no live reader marker nobody is reading it. A reader that opens it from now on
        reads the new answer, as it would after a rename. Else (a reader follows the old
        answer, or the sweep just unlinked it) None: a new file replaces it by a rename.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Held from here: the sweep leaves it alone; one it unlinked before has no link.
            if os.fstat(fd).st_nlink and not self.reader_markers(folder, chat, live=True):
                os.ftruncate(fd, 0)
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def reader_markers(self, folder: str, chat: str, live: bool = False) -> list[str]:
        """The reader marker names of a chat's answer (only those held, with `live`)."""
        prefix = chat + READER
        try:
            names = [name for name in os.listdir(folder) if name.startswith(prefix)]
        except FileNotFoundError:
            return []
        if live:
            names = [name for name in names if holder_alive(os.path.join(folder, name))]
        return names

    def wake_readers(self, folder: str, chat: str) -> int:
        """Wake the workers whose readers follow the chat's answer; return how many follow."""
        names = self.reader_markers(folder, chat, live=True)
        if self._coordinator is not None:
            workers = {name[len(chat) + len(READER) :].rsplit(".", 1)[0] for name in names}
            for worker in workers:
                self._coordinator.wake_worker(worker)
        return len(names)

    # -- readers --

    def follow(self, user_id: str, chat_id: str, start: int) -> FileReader | None:
        path = self._path(user_id, chat_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            if not lock_held(fd) and os.fstat(fd).st_mtime < time.time() - self.keep_seconds:
                return None  # ended (or lost) longer ago than the keep time
            marker = self._reader_marker(os.path.dirname(path), canonical_uuid(chat_id))
        except BaseException:
            os.close(fd)
            raise
        return FileReader(self, fd, marker, start)

    def _reader_marker(self, folder: str, chat: str) -> tuple[int, str]:
        """A marker file held while the reader follows; removed when it lets go (a killed
        reader's is swept)."""
        worker = self._coordinator.mailbox_name() if self._coordinator is not None else "none"
        path = os.path.join(folder, f"{chat}{READER}{worker}.{next(self._numbers)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd, path

    def generating(self, user_id: str, chat_id: str) -> bool:
        path = self._path(user_id, chat_id)
        return holder_alive(path) and not _ended(path)

    def generating_chat(self, user_id: str) -> str | None:
        folder = self._folder(user_id)
        try:
            names = [n for n in os.listdir(folder) if n.endswith(SUFFIX) and not n.startswith(".")]
        except FileNotFoundError:
            return None
        for name in names:
            path = os.path.join(folder, name)
            if holder_alive(path) and not _ended(path):
                return name[: -len(SUFFIX)]
        return None

    # -- clean-up --

    def _sweep_now_and_then(self) -> None:
        """Remove what the keep time has passed: at most once per keep time per process."""
        now = time.monotonic()
        with self._sweep_lock:
            if now - self._swept < max(self.keep_seconds, 1.0):
                return
            self._swept = now
        remove_unheld(self.root, time.time() - self.keep_seconds)


def _ended(path: str) -> bool:
    """Tell whether the answer's file ends with its end mark (a blank line)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size < 2:
                return False
            handle.seek(size - 2)
            return handle.read(2) == b"\n\n"
    except FileNotFoundError:
        return False
