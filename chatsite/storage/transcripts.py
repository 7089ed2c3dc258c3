"""Where a chat's transcript (its messages) lives: JSON files (default) or the database."""

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gevent import monkey
from peewee import fn

from ..greenlets import off_the_loop
from ..ids import canonical_uuid
from .tables import ChatTranscript

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 60
# Tests only: the path of a file that every chat file fsync waits for (see `gated_fsync`).
FSYNC_GATE_VARIABLE = "CHATSITE_TEST_FSYNC_GATE"
# Tests only: the same for every removal of chat files (a delete held half-way).
REMOVE_GATE_VARIABLE = "CHATSITE_TEST_REMOVE_GATE"


class TranscriptMissing(LookupError):
    """The chat's transcript is not in the store."""


class StagedTranscript(Protocol):
    """A transcript written ahead, to be made the chat's own inside the row's transaction."""

    size: int  # bytes the store keeps for it

    def commit(self) -> None: ...


class TranscriptStore(Protocol):
    """Read and write a chat's list of messages; ids are already checked uuids.

    Writing is staged, so that the slow part (encoding, writing, fsync) happens before the
    database's write lock is taken, and the transaction holds it only for a rename or one
    UPDATE: `with store.stage(...) as staged, write_transaction(): ...; staged.commit()`.
    A stage that is not `durable` (an answer's checkpoint) need not survive a machine
    crash, only the process: the store may skip its fsyncs.
    """

    def stage(
        self,
        user_id: str,
        chat_id: str,
        messages: list[dict],
        new: bool = False,
        durable: bool = True,
    ) -> AbstractContextManager[StagedTranscript]: ...
    def create(self, user_id: str, chat_id: str, messages: list[dict]) -> int: ...
    def write(self, user_id: str, chat_id: str, messages: list[dict]) -> int: ...
    def read(self, user_id: str, chat_id: str) -> list[dict]: ...
    def read_many(self, user_id: str, chat_ids: list[str]) -> dict[str, list[dict]]: ...
    def size(self, user_id: str, chat_id: str) -> int: ...
    def delete(self, user_id: str, chat_id: str) -> None: ...
    def delete_all(self, user_id: str) -> None: ...


class StagedWrites:
    """`create` and `write` in one step, for writes with no row to keep in step."""

    def stage(
        self,
        user_id: str,
        chat_id: str,
        messages: list[dict],
        new: bool = False,
        durable: bool = True,
    ) -> AbstractContextManager[StagedTranscript]:
        raise NotImplementedError

    def create(self, user_id: str, chat_id: str, messages: list[dict]) -> int:
        """Store a new chat's transcript; return the bytes kept."""
        with self.stage(user_id, chat_id, messages, new=True) as staged:
            staged.commit()
        return staged.size

    def write(self, user_id: str, chat_id: str, messages: list[dict]) -> int:
        """Replace a chat's transcript; return the bytes kept."""
        with self.stage(user_id, chat_id, messages) as staged:
            staged.commit()
        return staged.size

    def read(self, user_id: str, chat_id: str) -> list[dict]:
        raise NotImplementedError

    def read_many(self, user_id: str, chat_ids: list[str]) -> dict[str, list[dict]]:
        """The messages of several chats by id; one missing or unreadable is left out."""
        found = {}
        for chat_id in chat_ids:
            try:
                found[chat_id] = self.read(user_id, chat_id)
            except TranscriptMissing:
                continue
            except (OSError, ValueError):
                log.warning("chat %s could not be read", chat_id, exc_info=True)
        return found


def encode_for_file(messages: list[dict]) -> bytes:
    """A transcript as the file store writes it: UTF-8 JSON."""
    return json.dumps(messages, ensure_ascii=False).encode()


def transcript_size(messages: list[dict]) -> int:
    """About how many bytes a store keeps for these messages (the file store's exactly).

    What counts against MAX_STORAGE_PER_USER; the body limit has its own measure
    (`streaming.limits.body_size`).
    """
    return len(encode_for_file(messages))


@dataclass
class StagedFile:
    """A chat file written and synced beside its place; `commit` renames it over."""

    path: Path
    temp: Path
    size: int
    new: bool
    committed: bool = False

    def commit(self) -> None:
        """Make it the chat's file (one atomic rename)."""
        if self.new and self.path.exists():
            raise FileExistsError(f"chat file {self.path.name} exists")
        os.replace(self.temp, self.path)
        self.committed = True


def wait_at_gate(gate: Path) -> None:
    """Tests only: block this thread, as a slow disk does, until `gate` exists.

    It creates `<gate>.waiting` first, so a test knows a call is held there. The wait is a
    real blocking sleep (never gevent's), so it holds up whatever thread runs the call.
    """
    sleep = monkey.get_original("time", "sleep")
    gate.with_name(gate.name + ".waiting").touch()
    while not gate.exists():
        sleep(0.01)


def gated_fsync(gate: Path) -> Callable[[int], None]:
    """Tests only: an fsync that waits at `gate` first (see `wait_at_gate`)."""

    def fsync(fd: int) -> None:
        wait_at_gate(gate)
        os.fsync(fd)

    return fsync


class FileTranscriptStore(StagedWrites):
    """Chats as `<root>/<user uuid>/<chat uuid>.json`, written atomically.

    Writing and fsync run off the event loop (`off_the_loop`): a slow disk holds up the
    save that waits for it, never the worker's other streams. A stage that is not durable
    is written inline into the page cache, with no fsync: it survives a killed worker, not
    a machine crash (cheap enough to checkpoint an answer early).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fsync: Callable[[int], None] = os.fsync,
        remove_gate: Path | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._remove_gate = remove_gate  # tests only: removals wait there

    def path(self, user_id: str, chat_id: str) -> Path:
        """Return the chat's file path, guaranteed to be inside the root."""
        path = (self.root / canonical_uuid(user_id) / f"{canonical_uuid(chat_id)}.json").resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("chat path escapes the chat folder")
        return path

    @contextlib.contextmanager
    def stage(
        self,
        user_id: str,
        chat_id: str,
        messages: list[dict],
        new: bool = False,
        durable: bool = True,
    ) -> Iterator[StagedFile]:
        """Write the file beside its place and fsync it; after a commit, sync the folder
        (a stage that is not `durable`: neither)."""
        path = self.path(user_id, chat_id)
        data = encode_for_file(messages)
        try:
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=".json")
        except FileNotFoundError:  # the user's first chat (asked first: one syscall less)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=".json")
        staged = StagedFile(path, Path(temp), len(data), new)
        try:
            if durable:
                off_the_loop(self._write, fd, data, True)
            else:
                self._write(fd, data, False)
            yield staged
        finally:
            if not staged.committed:
                staged.temp.unlink(missing_ok=True)
        if durable:  # the rename survives a crash from here on
            off_the_loop(self._sync_folder, path.parent)

    def _write(self, fd: int, data: bytes, synced: bool) -> None:
        """Write `data` to the open file, and fsync it if `synced` (then off the loop)."""
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if synced:
                handle.flush()
                self._fsync(handle.fileno())

    def read(self, user_id: str, chat_id: str) -> list[dict]:
        """Return the chat's messages."""
        try:
            with open(self.path(user_id, chat_id), "rb") as handle:
                return json.load(handle)
        except FileNotFoundError:
            raise TranscriptMissing(chat_id) from None

    def size(self, user_id: str, chat_id: str) -> int:
        """The chat file's size in bytes, without reading it."""
        try:
            return self.path(user_id, chat_id).stat().st_size
        except FileNotFoundError:
            raise TranscriptMissing(chat_id) from None

    def delete(self, user_id: str, chat_id: str) -> None:
        """Remove the chat file if it is there."""
        path = self.path(user_id, chat_id)
        if self._remove_gate is not None:
            off_the_loop(wait_at_gate, self._remove_gate)
        path.unlink(missing_ok=True)

    def folder(self, user_id: str) -> Path:
        """The user's folder of chat files (it may not exist)."""
        return self.root / canonical_uuid(user_id)

    def delete_all(self, user_id: str) -> None:
        """Remove the user's folder with every file in it (many: off the event loop)."""
        off_the_loop(self._remove_folder, self.folder(user_id))

    def _remove_folder(self, folder: Path) -> None:
        if self._remove_gate is not None:
            wait_at_gate(self._remove_gate)
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        for entry in entries:  # only files are ever made here; a stray folder stays
            if not entry.is_dir(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            folder.rmdir()

    def user_ids(self) -> list[str]:
        """The users that have a folder here (folders not named by a uuid are not ours)."""
        return [entry.name for entry in os.scandir(self.root) if _is_uuid_name(entry.name)]

    def chat_ids(self, user_id: str) -> list[str]:
        """The chats whose file is in the user's folder (temp files are not chats)."""
        try:
            names = os.listdir(self.folder(user_id))
        except FileNotFoundError:
            return []
        return [
            name.removesuffix(".json")
            for name in names
            if name.endswith(".json") and _is_uuid_name(name.removesuffix(".json"))
        ]

    def remove_folder_if_empty(self, user_id: str) -> bool:
        """Remove the user's folder if nothing is left in it; tell whether it was."""
        try:
            self.folder(user_id).rmdir()
        except OSError:  # not empty, or gone already
            return False
        return True

    def clean_stray_temp_files(self) -> int:
        """Remove temp files left by a crash mid-write (old enough to be nobody's)."""
        removed = 0
        cutoff = time.time() - STALE_TEMP_SECONDS
        for temp in self.root.glob(f"*/{TEMP_PREFIX}*"):
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d stray temp chat files", removed)
        return removed

    def _sync_folder(self, folder: Path) -> None:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            self._fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass
class StagedRow:
    """A transcript encoded ahead; `commit` stores it inside the caller's transaction."""

    chat_id: str
    text: str
    new: bool
    size: int = 0

    def __post_init__(self) -> None:
        self.size = len(self.text.encode())

    def commit(self) -> None:
        """Insert (a new chat) or replace the chat's contents row."""
        if self.new:
            ChatTranscript.insert(chat=self.chat_id, messages=self.text).execute()
            return
        updated = (
            ChatTranscript.update(messages=self.text)
            .where(ChatTranscript.chat == self.chat_id)
            .execute()
        )
        if not updated:
            raise TranscriptMissing(self.chat_id)


class DatabaseTranscriptStore(StagedWrites):
    """Chats as JSON in the database, so that hosts sharing PostgreSQL share chats."""

    @contextlib.contextmanager
    def stage(
        self,
        user_id: str,
        chat_id: str,
        messages: list[dict],
        new: bool = False,
        durable: bool = True,
    ) -> Iterator[StagedRow]:
        """Encode the messages now; the row is written by `commit` (durable as the
        database makes it)."""
        yield StagedRow(canonical_uuid(chat_id), json.dumps(messages), new)

    def read(self, user_id: str, chat_id: str) -> list[dict]:
        """Return the chat's messages."""
        row = ChatTranscript.get_or_none(ChatTranscript.chat == canonical_uuid(chat_id))
        if row is None:
            raise TranscriptMissing(chat_id)
        return json.loads(row.messages)

    def read_many(self, user_id: str, chat_ids: list[str]) -> dict[str, list[dict]]:
        """The messages of several chats in one query; one missing is left out."""
        wanted = [canonical_uuid(chat_id) for chat_id in chat_ids]
        rows = ChatTranscript.select(ChatTranscript.chat, ChatTranscript.messages).where(
            ChatTranscript.chat.in_(wanted)
        )
        return {chat_id: json.loads(text) for chat_id, text in rows.tuples()}

    def size(self, user_id: str, chat_id: str) -> int:
        """The length of the chat's JSON text, without fetching it."""
        size = (
            ChatTranscript.select(fn.LENGTH(ChatTranscript.messages))
            .where(ChatTranscript.chat == canonical_uuid(chat_id))
            .scalar()
        )
        if size is None:
            raise TranscriptMissing(chat_id)
        return int(size)

    def delete(self, user_id: str, chat_id: str) -> None:
        """Remove the contents row if it is there."""
        ChatTranscript.delete().where(ChatTranscript.chat == canonical_uuid(chat_id)).execute()

    def delete_all(self, user_id: str) -> None:
        """Nothing left to do: the rows went in the transaction that removed the records."""


def _is_uuid_name(name: str) -> bool:
    """A file or folder name that is a uuid as chatsite writes them (canonical)."""
    try:
        return canonical_uuid(name) == name
    except ValueError:
        return False


def make_transcript_store(kind: str, chat_dir: str) -> TranscriptStore:
    """Build the configured transcript store."""
    if kind == "files":
        gate = os.environ.get(FSYNC_GATE_VARIABLE)
        remove_gate = os.environ.get(REMOVE_GATE_VARIABLE)
        store = FileTranscriptStore(
            chat_dir,
            gated_fsync(Path(gate)) if gate else os.fsync,
            Path(remove_gate) if remove_gate else None,
        )
        store.clean_stray_temp_files()
        return store
    if kind == "database":
        return DatabaseTranscriptStore()
    raise ValueError(f"CHATSITE_CHAT_STORE must be 'files' or 'database', not {kind!r}")
