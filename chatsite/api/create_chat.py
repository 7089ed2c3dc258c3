"""POST /create-chat: a new, empty chat named "New chat"."""

from flask import Blueprint

from ..site import current_site
from ..storage.chats import create_chat as create_chat_for
from .body import authenticated, user_to_serve
from .schemas import TokenOnlySchema

bp = Blueprint("create_chat", __name__)


@bp.post("/create-chat")
def create_chat():
    user_id, _ = authenticated(TokenOnlySchema)
    site = current_site()
    user_to_serve(user_id)
    chat_id = create_chat_for(site.transcripts, user_id, site.max_chats, site.max_storage)
    return {"status": "ok", "msg": "chat created", "chatId": chat_id}
