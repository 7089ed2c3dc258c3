"""POST /generate: a streamed completion, or fill-in-the-middle with `suffix`."""

from flask import Blueprint

from ..errors import ApiError
from ..llm.payloads import generate_payload
from ..site import current_site
from ..streaming.completion import GenerateReply
from ..streaming.reply import ndjson_response
from .admission import choose_model, lock_user, open_upstream
from .body import authenticated, user_record
from .schemas import GenerateSchema

bp = Blueprint("generate", __name__)


@bp.post("/generate")
def generate():
    user_id, data = authenticated(GenerateSchema)
    site = current_site()
    user = user_record(user_id, nodata_status=True)
    model, capabilities = choose_model(site, data.get("model"), user)
    if "suffix" in data and "insert" not in capabilities:
        raise ApiError(400, f"suffix: model {model!r} does not support fill-in-the-middle")
    payload = generate_payload(model, data["prompt"], data.get("suffix"), data.get("options"))
    user_lease = lock_user(site, user_id)
    slot, upstream = open_upstream(site, user_lease, model, "/api/generate", payload)
    return ndjson_response(GenerateReply(slot, upstream, user_lease))
