"""One answer of a demo model, before any wire format: its pieces, paced, and how it ends.

Both protocols stream the same thing (thinking pieces, then content pieces, then tool calls or
a crash); only the frames differ, and those are the protocol modules' job.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .models import TOKEN_RE, DemoModel

CRASH_PIECES = 3  # what a crashing model says before its error
CRASH_ERROR = "model runner crashed"


@dataclass
class Answer:
    """A demo model's answer to one request; ``pieces()`` streams it, counting as it goes."""

    model: DemoModel
    text: str
    prompt_tokens: int
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    thinking: str = ""
    delay: float = 0.0  # seconds slept before each piece
    repeat: int = 1  # the thinking and the text are said this many times
    count: int = 0  # pieces streamed so far
    cut: bool = False  # the piece limit ended the answer early
    started: float = field(default_factory=time.monotonic)

    @property
    def crashes(self) -> bool:
        return self.model.crashes

    def pace(self, delay: float | None, repeat: int, server_delay: float) -> None:
        """Take the request's delay, else the server's, else the model's; and its repeat."""
        self.delay = delay if delay is not None else (server_delay or self.model.token_delay)
        self.repeat = repeat

    def pieces(self, limit: int | None = None) -> Iterator[tuple[str, str]]:
        """Yield ("thinking" | "content", piece), at most ``limit`` of them, ``delay`` apart."""
        thoughts = itertools.chain.from_iterable(
            itertools.repeat(TOKEN_RE.findall(self.thinking), self.repeat)
        )
        # repeated lazily: dev_repeat may be large
        todo = itertools.chain.from_iterable(
            itertools.repeat(TOKEN_RE.findall(self.text), self.repeat)
        )
        if self.crashes:
            todo = itertools.islice(itertools.chain(todo, ["tick "] * CRASH_PIECES), CRASH_PIECES)
        tagged = itertools.chain(
            (("thinking", t) for t in thoughts), (("content", p) for p in todo)
        )
        for piece in tagged:
            if limit is not None and self.count >= limit:
                self.cut = True
                return
            self.count += 1
            if self.delay:
                time.sleep(self.delay)
            yield piece

    def took(self) -> float:
        """Seconds since the answer began."""
        return time.monotonic() - self.started

    def completion_tokens(self) -> int:
        """The pieces streamed, each tool call counting as one more."""
        return self.count + (0 if self.cut else len(self.tool_calls))
