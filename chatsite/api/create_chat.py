"""POST /create-chat: a new, empty chat named "New chat"."""

from flask import Blueprint

from ..chats import create_chat as create_chat_for
from ..schemas import TokenOnlySchema
from ..site import current_site
from ..users import require_user
from .body import authenticated

bp = Blueprint("create_chat", __name__)


@bp.post("/create-chat")
def create_chat():
    user_id, _ = authenticated(TokenOnlySchema)
    site = current_site()
    require_user(user_id, site.auto_create_users, code=400, status="nodata")
    chat_id = create_chat_for(site.chats, user_id, site.max_chats)
    return {"status": "ok", "msg": "chat created", "chatId": chat_id}
