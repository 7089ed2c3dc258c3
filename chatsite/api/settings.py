"""POST /settings: the user's preferences and chats."""

from flask import Blueprint

from ..schemas import TokenOnlySchema
from ..site import current_site
from ..users import require_user, user_prefs
from .body import authenticated

bp = Blueprint("settings", __name__)


@bp.post("/settings")
def settings():
    user_id, _ = authenticated(TokenOnlySchema)
    return user_prefs(require_user(user_id, current_site().auto_create_users))
