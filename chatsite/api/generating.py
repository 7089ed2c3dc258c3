"""Which chat of a user has an answer being produced: what /get-chat and /settings tell.

The coordination records the chat with the user's lock, wherever the request runs; the
lock is held until the answer is saved, and freed before its last line is sent: so a
client that has the last line never sees its chat still "generating".
"""

from ..site import Site


def generating_chat(site: Site, user_id: str) -> str | None:
    """The user's chat whose answer is being produced now, wherever it runs, or None."""
    return site.coordinator.generating_chat(user_id)


def generating(site: Site, user_id: str, chat_id: str) -> bool:
    """True while the chat's answer is being produced."""
    return generating_chat(site, user_id) == chat_id
