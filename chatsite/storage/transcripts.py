"""Where a chat's transcript (its messages) lives: JSON files (default) or the database."""

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

from peewee import fn

from ..ids import canonical_uuid
from .tables import ChatTranscript

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 60


class TranscriptMissing(LookupError):
    """The chat's transcript is not in the store."""


class TranscriptStore(Protocol):
    """Read and write a chat's list of messages; ids are already checked uuids."""

    def create(self, user_id: str, chat_id: str, messages: list[dict]) -> None: ...
    def read(self, user_id: str, chat_id: str) -> list[dict]: ...
    def size(self, user_id: str, chat_id: str) -> int: ...
    def write(self, user_id: str, chat_id: str, messages: list[dict]) -> None: ...
    def delete(self, user_id: str, chat_id: str) -> None: ...


class FileTranscriptStore:
    """Chats as `<root>/<user uuid>/<chat uuid>.json`, written atomically."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, user_id: str, chat_id: str) -> Path:
        """Return the chat's file path, guaranteed to be inside the root."""
        path = (self.root / canonical_uuid(user_id) / f"{canonical_uuid(chat_id)}.json").resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("chat path escapes the chat folder")
        return path

    def create(self, user_id: str, chat_id: str, messages: list[dict]) -> None:
        """Write a new chat file."""
        path = self.path(user_id, chat_id)
        if path.exists():
            raise FileExistsError(f"chat {chat_id} exists")
        self._write_atomic(path, messages)

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

    def write(self, user_id: str, chat_id: str, messages: list[dict]) -> None:
        """Replace the chat's messages in one atomic step."""
        self._write_atomic(self.path(user_id, chat_id), messages)

    def delete(self, user_id: str, chat_id: str) -> None:
        """Remove the chat file if it is there."""
        self.path(user_id, chat_id).unlink(missing_ok=True)

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

    @staticmethod
    def _write_atomic(path: Path, messages: list[dict]) -> None:
        """Write beside the target, fsync, rename over it, fsync the folder."""
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        data = json.dumps(messages, ensure_ascii=False).encode()
        fd, temp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".json")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class DatabaseTranscriptStore:
    """Chats as JSON in the database, so that hosts sharing PostgreSQL share chats."""

    def create(self, user_id: str, chat_id: str, messages: list[dict]) -> None:
        """Insert the chat's contents (inside the caller's transaction)."""
        ChatTranscript.insert(chat=canonical_uuid(chat_id), messages=json.dumps(messages)).execute()

    def read(self, user_id: str, chat_id: str) -> list[dict]:
        """Return the chat's messages."""
        row = ChatTranscript.get_or_none(ChatTranscript.chat == canonical_uuid(chat_id))
        if row is None:
            raise TranscriptMissing(chat_id)
        return json.loads(row.messages)

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

    def write(self, user_id: str, chat_id: str, messages: list[dict]) -> None:
        """Replace the chat's messages."""
        updated = (
            ChatTranscript.update(messages=json.dumps(messages))
            .where(ChatTranscript.chat == canonical_uuid(chat_id))
            .execute()
        )
        if not updated:
            raise TranscriptMissing(chat_id)

    def delete(self, user_id: str, chat_id: str) -> None:
        """Remove the contents row if it is there."""
        ChatTranscript.delete().where(ChatTranscript.chat == canonical_uuid(chat_id)).execute()


def make_transcript_store(kind: str, chat_dir: str) -> TranscriptStore:
    """Build the configured transcript store."""
    if kind == "files":
        store = FileTranscriptStore(chat_dir)
        store.clean_stray_temp_files()
        return store
    if kind == "database":
        return DatabaseTranscriptStore()
    raise ValueError(f"CHATSITE_CHAT_STORE must be 'files' or 'database', not {kind!r}")
