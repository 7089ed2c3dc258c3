"""The chat endpoints in one blueprint: create, read (and, as they come, list, rename, delete)."""

from flask import Blueprint

from ..site import current_site
from ..storage.chats import create_chat as create_chat_for
from ..storage.chats import read_chat
from .body import authenticated, user_to_serve
from .schemas import ChatIdSchema, TokenOnlySchema

bp = Blueprint("chats", __name__)


@bp.post("/create-chat")
def create_chat():
    """A new, empty chat named "New chat"."""
    user_id, _ = authenticated(TokenOnlySchema)
    site = current_site()
    user_to_serve(user_id)
    chat_id = create_chat_for(site.transcripts, user_id, site.max_chats, site.max_storage)
    return {"status": "ok", "msg": "chat created", "chatId": chat_id}


@bp.post("/get-chat")
def get_chat():
    """The messages of one of the user's chats."""
    user_id, data = authenticated(ChatIdSchema)
    contents = read_chat(current_site().transcripts, user_id, str(data["chatId"]))
    return {"status": "ok", "msg": "", "contents": contents}
