"""Which chat of a user has an answer being produced: what /get-chat and /settings tell."""

from ..site import Site


def generating_chat(site: Site, user_id: str) -> str | None:
    """The user's chat whose answer is being produced now, wherever it runs, or None.

    The answers' logs tell, until the coordination records it with the user's lock (#19).
    """
    return site.line_logs.generating_chat(user_id)


def generating(site: Site, user_id: str, chat_id: str) -> bool:
    """True while the chat's answer is being produced."""
    return site.line_logs.generating(user_id, chat_id)
