"""Tools for the tests, loaded by `module:function` paths as CHATSITE_TOOLS names them.

Good ones, and ones a registry must refuse (`no_context`, `NOT_CALLABLE`).
"""

import os
import time
from typing import Literal

from chatsite.tools import ToolContext


def slow_tool(context: ToolContext, seconds: float = 2.0) -> str:
    """Sleep, to prove the tool time limit.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "woke up"


def wait_for_file(context: ToolContext, path: str) -> str:
    """Run until a file exists (at most 60 s), so a test decides when a tool returns.

    Args:
        path: The file to wait for.
    """
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "the file is there"


def whoami(context: ToolContext) -> str:
    """Tell the model which user it is talking to."""
    return context.user_id


def echo(context: ToolContext, text: str, times: int = 1) -> str:
    """Repeat some text.

    Args:
        text: What to repeat.
        times: How many times.
    """
    return text * times


def describe(
    context: ToolContext,
    ratio: float,
    tags: list[str] | None = None,
    mode: Literal["fast", "slow"] = "fast",
    note: str | None = None,
) -> dict:
    """Report the arguments received, with their Python types."""
    return {
        "ratio": [type(ratio).__name__, ratio],
        "tags": tags,
        "mode": mode,
        "note": note,
    }


def slow(context: ToolContext) -> str:
    """Take two seconds (the tests give it less: its process is killed)."""
    time.sleep(2)
    return "done"


def spin(context: ToolContext) -> str:
    """Spin the CPU forever in pure Python, as a buggy operator tool might."""
    while True:
        pass


def refuse(context: ToolContext, reason: str) -> str:
    """Fail with the model's own words.

    Args:
        reason: Why.
    """
    raise ValueError(reason)


def die(context: ToolContext) -> str:
    """End the tool process at once, as a crashing native library would."""
    os._exit(3)


def boom(context: ToolContext) -> str:
    """Always fail."""
    raise RuntimeError("boom")


def huge(context: ToolContext) -> str:
    """Return far more text than a tool message may hold."""
    return "x" * 50_000


def no_context(text: str) -> str:
    """Lacks the context parameter."""
    return text


NOT_CALLABLE = 42


def kitchen_sink(
    context: ToolContext,
    name: str,
    count: int,
    ratio: float,
    flag: bool,
    tags: list[str],
    mode: Literal["fast", "slow"],
    level: Literal[1, 2, 3],
    note: str | None,
    limit: int | None = None,
    scale: float = 1.0,
) -> str:
    """Exercise every supported annotation,
    with a first paragraph over two lines.

    This paragraph is for developers only.

    Args:
        name: The name,
            continued on a second line.
        count (int): How many.
        ratio: A fraction.
        flag: Whether to.
        tags: Labels.
        mode: How fast.
        level: How much.
        note: An optional remark.
        limit: An optional cap.

    Returns:
        Nothing useful.
    """
    return ""
