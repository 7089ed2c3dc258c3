"""POST /settings: the user's preferences and chats."""

from flask import Blueprint

from ..storage.users import user_prefs
from .body import authenticated, user_record
from .schemas import TokenOnlySchema

bp = Blueprint("settings", __name__)


@bp.post("/settings")
def settings():
    user_id, _ = authenticated(TokenOnlySchema)
    return user_prefs(user_record(user_id))
