"""The app's long-lived services, built once by the factory."""

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from .auth import TokenVerifier
from .chatstore import ChatStore
from .schemas import Limits


@dataclass
class Site:
    """What the endpoints need, so that views stay thin."""

    tokens: TokenVerifier
    limits: Limits
    chats: ChatStore
    auto_create_users: bool = True
    max_chats: int = 10_000
    extras: dict[str, Any] = field(default_factory=dict)


def current_site() -> Site:
    """Return the running app's services."""
    return current_app.extensions["chatsite"]
