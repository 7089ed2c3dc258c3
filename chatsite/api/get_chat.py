"""POST /get-chat: the messages of one of the user's chats."""

from flask import Blueprint

from ..site import current_site
from ..storage.chats import read_chat
from .body import authenticated
from .generating import generating
from .schemas import ChatIdSchema

bp = Blueprint("get_chat", __name__)


@bp.post("/get-chat")
def get_chat():
    user_id, data = authenticated(ChatIdSchema)
    site = current_site()
    chat_id = str(data["chatId"])
    contents = read_chat(site.transcripts, user_id, chat_id)
    if generating(site, user_id, chat_id):
        contents = answer_in_progress(contents)
    return {"status": "ok", "msg": "", "contents": contents}


def answer_in_progress(contents: list[dict]) -> list[dict]:
    """The chat with its answer so far (as last saved) marked as still being produced."""
    last = contents[-1] if contents else None
    if last is None or last.get("role") != "assistant" or not last.get("incomplete"):
        last = {"role": "assistant", "content": ""}  # not saved yet: nothing so far
        contents = [*contents, last]
    contents[-1] = {**last, "incomplete": True, "generating": True}
    return contents
