"""POST /chat: a streamed conversation turn, with tools, saved to a chat file."""

from functools import partial

from flask import Blueprint

from ..chats import find_chat, save_chat
from ..conversation import ChatReply, ToolRunner, upstream_messages
from ..db import db
from ..schemas import ChatSchema
from ..site import Site, current_site
from ..streaming import ndjson_response
from ..users import require_user
from .body import authenticated
from .start import choose_model, lock_user, open_upstream

bp = Blueprint("chat", __name__)


def save_after_stream(site: Site, user_id: str, chat_id: str, messages: list[dict]) -> None:
    """Save the chat with a short-lived connection: none is held while streaming."""
    with db.connection_context():
        save_chat(site.chats, user_id, chat_id, messages)


def tool_runner(site: Site, user_id: str, capabilities: set[str]) -> ToolRunner | None:
    """Offer tools only to models that can use them."""
    if site.tools is None or "tools" not in capabilities or not site.tools.names():
        return None
    from ..tools import ToolContext

    return ToolRunner(
        registry=site.tools,
        context=ToolContext(user_id=user_id, chats=site.chats),
        timeout=site.tool_timeout,
        max_rounds=site.max_tool_rounds,
    )


@bp.post("/chat")
def chat():
    user_id, data = authenticated(ChatSchema)
    site = current_site()
    user = require_user(user_id, site.auto_create_users, code=400, status="nodata")
    save = None
    if "chatfile" in data:
        chat_id = str(data["chatfile"])
        find_chat(user_id, chat_id)
        save = partial(save_after_stream, site, user_id, chat_id)
    model, capabilities = choose_model(site, data.get("model"), user)
    system = data.get("system", user.system_prompt)
    payload = {"model": model, "messages": upstream_messages(data["messages"], system)}
    if "options" in data:
        payload["options"] = data["options"]
    tools = tool_runner(site, user_id, capabilities)
    if tools is not None:
        payload["tools"] = site.tools.schemas()
    user_lease = lock_user(site, user_id)
    slot, upstream = open_upstream(site, user_lease, model, "/api/chat", payload)
    reply = ChatReply(slot, upstream, user_lease, payload, data["messages"], tools, save)
    return ndjson_response(reply)
