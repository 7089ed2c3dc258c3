"""POST /get-chat: the messages of one of the user's chats."""

from flask import Blueprint

from ..site import current_site
from ..storage.chats import read_chat
from .body import authenticated
from .schemas import ChatIdSchema

bp = Blueprint("get_chat", __name__)


@bp.post("/get-chat")
def get_chat():
    user_id, data = authenticated(ChatIdSchema)
    contents = read_chat(current_site().transcripts, user_id, str(data["chatId"]))
    return {"status": "ok", "msg": "", "contents": contents}
