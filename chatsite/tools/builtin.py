"""The tools every chat gets by default: the time, a calculator, search of one's own chats.

Each one bounds its own work: a tool past the time limit is killed, which frees the server
but leaves the model with an error instead of an answer.
"""

import datetime
import json
import logging
import zoneinfo

from ..storage.search import search_chats as search_index
from .calculator import evaluate, format_number
from .context import ToolContext

log = logging.getLogger(__name__)

MAX_TIMEZONE_CHARS = 100
MAX_QUERY_CHARS = 200
MAX_SEARCH_RESULTS = 20


def current_time(context: ToolContext, timezone: str = "UTC") -> str:
    """Get the current date and time in a time zone, as ISO 8601 with the weekday.

    The model has no clock of its own; the server's clock (context.now) is the truth.

    Args:
        timezone: IANA time zone name, such as "Europe/Paris" or "America/New_York".
            Defaults to "UTC".
    """
    zone = _zone(timezone)
    now = context.now()
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    local = now.astimezone(zone).replace(microsecond=0)
    return f"{local.isoformat()} ({local:%A}, {timezone.strip()})"


def _zone(name: str) -> datetime.tzinfo:
    """Look up an IANA zone; UTC works even on hosts without time zone data."""
    key = name.strip()
    if key.upper() == "UTC":
        return datetime.UTC
    if len(key) <= MAX_TIMEZONE_CHARS:
        try:
            return zoneinfo.ZoneInfo(key)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
    shown = key if len(key) <= MAX_TIMEZONE_CHARS else key[:MAX_TIMEZONE_CHARS] + "…"
    raise ValueError(
        f"unknown time zone {shown!r}: use an IANA name such as 'Europe/Paris', "
        "'America/New_York' or 'UTC'"
    )


def calculate(context: ToolContext, expression: str) -> str:
    """Evaluate an arithmetic expression such as "(3 + 4.5) * 2**10 / sqrt(7)".
    Supports + - * / // % ** and parentheses, the constants pi and e, and the functions
    sqrt, sin, cos, tan, log (natural, or log(x, base)), exp, abs, round, floor, ceil and
    factorial. Whole numbers are exact, up to about 10,000 digits.

    Models are unreliable at arithmetic; this parses with `ast` (never eval) within bounds.

    Args:
        expression: The arithmetic expression, at most 500 characters.
    """
    return format_number(evaluate(expression))


def search_chats(context: ToolContext, query: str, limit: int = 5) -> str:
    """Search the user's own saved chats for words (any case, any accents, any script).
    Returns a JSON list of the chats holding every word, newest first, each with chat_id,
    chat_name, the role of the message the excerpt is from (null: the chat's name) and an
    excerpt around the first hit.

    Lets the model recall earlier conversations; only context.user_id's chats are read,
    through the search index (storage/search.py), as /search-chats does.

    Args:
        query: The words to look for, 1 to 200 characters.
        limit: How many chats to return at most, 1 to 20. Defaults to 5.
    """
    text = query.strip()
    if not 1 <= len(text) <= MAX_QUERY_CHARS:
        raise ValueError(f"query must be 1 to {MAX_QUERY_CHARS} characters")
    if not 1 <= limit <= MAX_SEARCH_RESULTS:
        raise ValueError(f"limit must be from 1 to {MAX_SEARCH_RESULTS}")
    hits = search_index(context.transcripts, context.user_id, text, limit)
    if not hits:
        return f"No matches for {json.dumps(text, ensure_ascii=False)} in your saved chats."
    matches = [
        {"chat_id": hit.chat_id, "chat_name": hit.name, "role": hit.role, "excerpt": hit.snippet}
        for hit in hits
    ]
    return json.dumps(matches, ensure_ascii=False)


BUILTIN_TOOLS = [current_time, calculate, search_chats]
