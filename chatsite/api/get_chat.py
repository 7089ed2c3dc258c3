"""POST /get-chat: the messages of one of the user's chats."""

from flask import Blueprint

from ..chats import read_chat
from ..schemas import ChatIdSchema
from ..site import current_site
from .body import authenticated

bp = Blueprint("get_chat", __name__)


@bp.post("/get-chat")
def get_chat():
    user_id, data = authenticated(ChatIdSchema)
    contents = read_chat(current_site().chats, user_id, str(data["chatId"]))
    return {"status": "ok", "msg": "", "contents": contents}
