"""POST /generate: a streamed completion, or fill-in-the-middle with `suffix`."""

from flask import Blueprint

from ..errors import ApiError
from ..generation import GenerateReply
from ..schemas import GenerateSchema
from ..site import current_site
from ..streaming import ndjson_response
from ..users import require_user
from .body import authenticated
from .start import choose_model, lock_user, open_upstream

bp = Blueprint("generate", __name__)


@bp.post("/generate")
def generate():
    user_id, data = authenticated(GenerateSchema)
    site = current_site()
    user = require_user(user_id, site.auto_create_users, code=400, status="nodata")
    model, capabilities = choose_model(site, data.get("model"), user)
    if "suffix" in data and "insert" not in capabilities:
        raise ApiError(400, f"suffix: model {model!r} does not support fill-in-the-middle")
    payload = {"model": model, "prompt": data["prompt"]}
    for name in ("suffix", "options"):
        if name in data:
            payload[name] = data[name]
    user_lease = lock_user(site, user_id)
    slot, upstream = open_upstream(site, user_lease, model, "/api/generate", payload)
    return ndjson_response(GenerateReply(slot, upstream, user_lease))
