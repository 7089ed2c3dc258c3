"""Chat titles written by a model (TITLE_MODEL), in the background, after a first answer.

A title is a courtesy, never a cost to anyone: it waits in the model's line like every
request (a slot is never taken out of turn), gives up silently if no slot frees within
TITLE_WAIT seconds, never holds the user's lock (the user goes on at once), and never
replaces a name the user gave (`storage.chats.name_titled`).
"""

import logging
import threading
import time
import unicodedata

from .llm.errors import InstanceError, NoInstanceAvailable, QueueFull, UnknownModel
from .llm.pool import InstancePool
from .llm.protocols.base import CONTENT, ChatRequest
from .storage.chats import MAX_CHAT_NAME_CHARS, chat_named_by, name_titled
from .storage.database import database_connection

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = MAX_CHAT_NAME_CHARS  # 60, as a name taken from the first message
MAX_SOURCE_CHARS = 2000  # of the first message, shown to the title model
TITLE_OPTIONS = {"num_predict": 32, "temperature": 0.2}
TITLE_PROMPT = (
    "Write a title of at most six words for a conversation that begins with the message "
    "below. Answer with the title only, without quotes.\n\nMessage:\n"
)
DROPPED = (InstanceError, NoInstanceAvailable, QueueFull, UnknownModel)
RETITLED = ("new", "message")  # names a title may replace
QUOTES = "\"'*#` \u201c\u201d\u2018\u2019"  # stripped around a title (typographic quotes too)


def first_answer(messages: list[dict]) -> str | None:
    """The first user message's text if `messages` are a chat's first, complete exchange."""
    users = [m for m in messages if m.get("role") == "user"]
    last = messages[-1] if messages else {}
    if len(users) != 1 or last.get("role") != "assistant" or last.get("incomplete"):
        return None
    text = str(users[0].get("content") or "").strip()
    return text or None


def clean_title(text: str) -> str | None:
    """The model's answer as a chat name: one line, no quotes or invisible characters,
    at most MAX_TITLE_CHARS; None when nothing is left."""
    kept = "".join(c for c in text if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf"))
    lines = [line for line in kept.splitlines() if line.strip()]
    title = " ".join(lines[0].split()).strip(QUOTES) if lines else ""
    if len(title) > MAX_TITLE_CHARS:
        title = title[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    return title or None


class TitleWriter:
    """Ask the title model for chats' titles, each in a background thread (a greenlet
    under gevent), through the pool's fair line."""

    def __init__(self, pool: InstancePool, model: str, wait: float) -> None:
        self.pool = pool
        self.model = model
        self.wait = wait

    def after_save(self, user_id: str, chat_id: str, messages: list[dict]) -> None:
        """Start a title for the chat if this save was its first answer."""
        text = first_answer(messages)
        if text is None:
            return
        threading.Thread(
            target=self.write, args=(user_id, chat_id, text), name="chatsite-title", daemon=True
        ).start()

    def write(self, user_id: str, chat_id: str, text: str) -> None:
        """Ask for the title and name the chat with it; any failure only drops the title."""
        try:
            with database_connection():
                if chat_named_by(user_id, chat_id) not in RETITLED:
                    log.info("chat %s keeps its name: no title", chat_id)
                    return
            title = self.ask(text)
            if title is None:
                return
            with database_connection():
                named = name_titled(user_id, chat_id, title, RETITLED)
            log.info("chat %s %s", chat_id, "titled" if named else "kept its name")
        except DROPPED as error:
            log.info("no title for chat %s: %s", chat_id, error)
        except Exception:
            log.exception("could not title chat %s", chat_id)

    def ask(self, text: str) -> str | None:
        """The model's title for a chat that begins with `text`, waiting in line at most
        `wait` seconds for a slot (NoInstanceAvailable after that)."""
        model = self.pool.catalog.resolve(self.model)  # as the catalog lists it: its line
        if model is None:
            raise UnknownModel(f"title model {self.model!r} is not offered")
        messages = [{"role": "user", "content": TITLE_PROMPT + text[:MAX_SOURCE_CHARS]}]
        admission = self.pool.admit(ChatRequest(model, messages, options=dict(TITLE_OPTIONS)))
        admission.deadline = time.monotonic() + self.wait
        try:
            for _position in admission.steps():
                pass
            upstream = admission.upstream
            try:
                pieces = [
                    value
                    for batch in upstream.batches()
                    for kind, value in batch
                    if kind == CONTENT
                ]
            finally:
                upstream.close()
                upstream.release()
        finally:
            admission.close()
        return clean_title("".join(str(piece) for piece in pieces))
