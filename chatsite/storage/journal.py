"""The save journal: accepted exchanges the database could not take yet, kept on this host.

One file per save, `<sequence>-<chat uuid>.json`, in the journal folder (the instance
folder's `journal/` unless JOURNAL_DIR says otherwise). A file is written beside its place,
fsynced, renamed in and the folder fsynced, all off the event loop: once `add` returns, the
exchange survives a crash of the worker or the host. Sequences grow per chat, so the names
of one chat's files sort in the order its saves were accepted (a user has one request at a
time, so one chat's saves never race each other).

Whoever replays holds `replay.lock` (an flock: dropped by the kernel if the worker dies), so
the workers of a host never replay one chat's saves side by side or out of order.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..greenlets import off_the_loop
from ..ids import canonical_uuid

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
HELD_PREFIX = "held-"  # an entry that cannot be replayed, kept for the operator
STALE_TEMP_SECONDS = 60
ENTRY_NAME = re.compile(r"^(\d{20})-([0-9a-f-]{36})\.json$")
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


@dataclass(frozen=True)
class Entry:
    """One accepted save: the chat's whole new list of messages, and when it was accepted."""

    user_id: str
    chat_id: str
    accepted: datetime.datetime  # naive UTC, as the tables keep it
    messages: list[dict]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "user": self.user_id,
                "chat": self.chat_id,
                "accepted": self.accepted.isoformat(),
                "messages": self.messages,
            },
            ensure_ascii=False,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Entry":
        """Parse an entry file; ValueError (or KeyError) if it is not one."""
        record = json.loads(data)
        messages = record["messages"]
        if not isinstance(messages, list):
            raise ValueError("messages is not a list")
        return cls(
            canonical_uuid(record["user"]),
            canonical_uuid(record["chat"]),
            datetime.datetime.fromisoformat(record["accepted"]),
            messages,
        )


class Journal:
    """The folder of journaled saves; every blocking call runs off the event loop."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).resolve()

    def add(self, entry: Entry) -> Path:
        """Keep an entry durably, after every earlier entry of its chat; return its file."""
        return off_the_loop(self._add, entry)

    def pending(self, chat_id: str | None = None) -> list[Path]:
        """The entries waiting (of one chat, or all), oldest first within each chat."""
        return off_the_loop(self._pending, chat_id)

    def has_pending(self, chat_id: str) -> bool:
        """Whether entries of the chat wait, looked up inline (no thread-pool hop, which
        cost more than the look itself on every save): the folder holds entries only while
        the database is away (or its replay is behind), so the look is one short scandir."""
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    match = ENTRY_NAME.match(entry.name)
                    if match and match.group(2) == chat_id:
                        return True
        except FileNotFoundError:
            pass
        return False

    def read(self, path: Path) -> Entry:
        """The entry in `path` (ValueError if the file is not a valid entry)."""
        return Entry.decode(off_the_loop(path.read_bytes))

    def remove(self, path: Path) -> None:
        """Forget a replayed entry (a removal lost in a crash only means one more replay)."""
        off_the_loop(path.unlink, True)

    def hold(self, path: Path) -> None:
        """Set aside an entry that cannot be replayed, under a name nothing replays."""
        off_the_loop(os.replace, path, path.with_name(HELD_PREFIX + path.name))

    @contextlib.contextmanager
    def replay_lock(self) -> Iterator[bool]:
        """Hold the host's replay lock if it is free; yield whether it is held."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "replay.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in _BUSY:
                    raise
                yield False
                return
            yield True
        finally:
            os.close(fd)  # drops the lock

    def clean_stray_temp_files(self) -> int:
        """Remove temp files left by a crash mid-write (old enough to be nobody's)."""
        removed = 0
        cutoff = time.time() - STALE_TEMP_SECONDS
        for temp in self.folder.glob(f"{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
        return removed

    # -- blocking parts, run off the loop --

    def _pending(self, chat_id: str | None) -> list[Path]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = ENTRY_NAME.match(name)
            if match and (chat_id is None or match.group(2) == chat_id):
                found.append(name)
        return [self.folder / name for name in sorted(found)]

    def _add(self, entry: Entry) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        chat_id = canonical_uuid(entry.chat_id)
        earlier = self._pending(chat_id)
        sequence = time.time_ns()
        if earlier:
            sequence = max(sequence, int(earlier[-1].name[:20]) + 1)
        path = self.folder / f"{sequence:020d}-{chat_id}.json"
        fd, temp = tempfile.mkstemp(dir=self.folder, prefix=TEMP_PREFIX, suffix=".json")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(entry.encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        folder_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)  # the rename survives a crash from here on
        finally:
            os.close(folder_fd)
        return path
