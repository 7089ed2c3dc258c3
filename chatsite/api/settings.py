"""POST /settings: the user's preferences and newest chats."""

from flask import Blueprint

from ..site import current_site
from ..storage.tables import User
from ..storage.users import user_prefs
from .body import authenticated, user_record
from .generating import generating_chat
from .schemas import TokenOnlySchema

bp = Blueprint("settings", __name__)


def prefs_answer(user: User) -> dict:
    """The user's preferences as /settings and /update-settings answer them."""
    return user_prefs(user, current_site().settings_chat_files)


@bp.post("/settings")
def settings():
    user_id, _ = authenticated(TokenOnlySchema)
    prefs = prefs_answer(user_record(user_id))
    chat_id = generating_chat(current_site(), user_id)
    if chat_id is not None:
        for entry in prefs["chat_files"]["files"]:
            if str(entry["id"]) == chat_id:
                entry["generating"] = True
    return prefs
