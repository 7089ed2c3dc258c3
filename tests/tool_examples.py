"""Operator-style tools for the tests, loaded through CHATSITE_TOOLS paths."""

import time

from chatsite.tools import ToolContext


def slow_tool(context: ToolContext, seconds: float = 2.0) -> str:
    """Sleep, to prove the tool time limit.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "woke up"


def whoami(context: ToolContext) -> str:
    """Tell the model which user it is talking to."""
    return context.user_id


def spin(context: ToolContext) -> str:
    """Spin the CPU forever in pure Python, as a buggy operator tool might."""
    while True:
        pass
