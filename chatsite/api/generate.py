"""POST /generate: a streamed completion, or fill-in-the-middle with `suffix`."""

from flask import Blueprint

from ..errors import ApiError
from ..llm.payloads import generate_payload
from ..site import current_site
from ..streaming.completion import GenerateReply
from .body import authenticated, user_to_serve
from .gate import choose_model, lock_user, start_reply
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
    payload = generate_payload(model, data["prompt"], data.get("suffix"), data.get("options"))
    user_lease = lock_user(site, user_id)
    reply = GenerateReply(site.pool.admit(model, "/api/generate", payload), user_lease)
    return start_reply(site, reply, user_id, data.get("queue_updates", False))
