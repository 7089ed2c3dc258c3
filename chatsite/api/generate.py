"""POST /generate: a streamed completion, or fill-in-the-middle with `suffix`."""

from flask import Blueprint

from ..errors import ApiError
from ..llm.protocols.base import CompletionRequest
from ..site import current_site
from ..streaming.completion import GenerateReply
from .body import authenticated, user_to_serve
from .gate import check_options, choose_model, lock_user, start_reply
from .schemas import GenerateSchema

bp = Blueprint("generate", __name__)


@bp.post("/generate")
def generate():
    user_id, data = authenticated(GenerateSchema)
    site = current_site()
    user = user_to_serve(user_id)
    model, capabilities = choose_model(site, data.get("model"), user)
    if "suffix" in data and "insert" not in capabilities:
        raise ApiError(400, f"suffix: model {model!r} does not support fill-in-the-middle")
    options = check_options(site, model, data["options"])
    request = CompletionRequest(model, data["prompt"], data.get("suffix"), options)
    user_lease = lock_user(site, user_id)
    reply = GenerateReply(site.pool.admit(request), user_lease)
    return start_reply(site, reply, user_id, data.get("queue_updates", False))
