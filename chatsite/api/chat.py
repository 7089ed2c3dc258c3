"""POST /chat: a streamed conversation turn, with tools, saved to the chat's transcript."""

from functools import partial

from flask import Blueprint, current_app

from ..errors import ApiError
from ..llm.protocols.base import ChatRequest
from ..site import Site, current_site
from ..storage.chats import ensure_room, find_chat
from ..storage.saves import Saved
from ..storage.transcripts import transcript_size
from ..streaming.conversation import ChatReply, Clock, ToolRunner, stamped
from ..streaming.limits import ChatTooLong, ReplyRoom, body_budget
from ..tools import ToolContext
from .body import authenticated, body_schemas, user_to_serve
from .gate import check_options, choose_model, lock_user, start_reply
from .schemas import ChatSchema

bp = Blueprint("chat", __name__)


def save_after_stream(site: Site, user_id: str, chat_id: str, messages: list[dict]) -> Saved:
    """Save the chat (or journal it while the database is away); then, after a first
    answer, have the title model (if any) title it in the background."""
    saved = site.saves.save(user_id, chat_id, messages)
    if site.titles is not None:
        site.titles.after_save(user_id, chat_id, messages)
    return saved


def tool_runner(site: Site, user_id: str, capabilities: set[str]) -> ToolRunner | None:
    """Offer tools only to models that can use them."""
    if site.tools is None or "tools" not in capabilities or not site.tools.names():
        return None
    return ToolRunner(
        registry=site.tools,
        context=ToolContext(user_id=user_id, transcripts=site.transcripts),
        timeout=site.tool_timeout,
        max_rounds=site.max_tool_rounds,
        max_calls=site.max_tool_calls,
    )


def reply_room(messages: list[dict], saving: bool) -> ReplyRoom:
    """What the reply may add; a saved chat must stay one that /chat accepts (else 400)."""
    limits = body_schemas().limits
    if not saving:
        return ReplyRoom(limits.message_chars)
    body_limit = current_app.config.get("MAX_CONTENT_LENGTH")
    max_bytes = body_budget(int(body_limit)) if body_limit else None
    try:
        return ReplyRoom(limits.message_chars, limits.messages, max_bytes, messages)
    except ChatTooLong as error:
        raise ApiError(400, f"messages: {error}; start a new chat") from None


def think_flag(data: dict, model: str, capabilities: set[str]) -> bool | None:
    """The `think` to pass on: only to models that think; asking another one is a 400."""
    think = data.get("think")
    if "thinking" in capabilities:
        return think
    if think:
        raise ApiError(400, f"think: model {model!r} does not think")
    return None


@bp.post("/chat")
def chat():
    user_id, data = authenticated(ChatSchema)
    clock = Clock(data["messages"])
    messages = stamped(data["messages"], clock)  # stamped on arrival, before any reply
    site = current_site()
    user = user_to_serve(user_id)
    save = checkpoint = chat_id = None
    if "chatfile" in data:
        chat_id = str(data["chatfile"])
        find_chat(user_id, chat_id)
        # Refused before the GPU works for it; an accepted reply is always saved.
        ensure_room(user_id, chat_id, transcript_size(messages), site.max_storage)
        save = partial(save_after_stream, site, user_id, chat_id)
        checkpoint = partial(site.saves.checkpoint, user_id, chat_id)
    room = reply_room(messages, save is not None)
    model, capabilities = choose_model(site, data.get("model"), user)
    think = think_flag(data, model, capabilities)
    runner = tool_runner(site, user_id, capabilities)
    request = ChatRequest(
        model,
        list(data["messages"]),
        data.get("system", user.system_prompt),
        check_options(site, model, data["options"]),
        site.tools.schemas() if runner is not None else None,
        think,
    )
    user_lease = lock_user(site, user_id, chat_id)
    admission = site.pool.admit(request)
    reply = ChatReply(
        admission, user_lease, request, messages, room, clock, runner, save, checkpoint
    )
    return start_reply(site, reply, user_id, data.get("queue_updates", False), chat_id)
