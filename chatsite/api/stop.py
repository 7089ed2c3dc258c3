"""POST /stop: end this user's /chat or /generate in flight, wherever it runs."""

import time

from flask import Blueprint

from ..errors import ApiError
from ..site import current_site
from .body import authenticated
from .schemas import TokenOnlySchema

bp = Blueprint("stop", __name__)

RESEND = 0.25  # seconds: a request that had not yet set up its stop watch hears the next one
CHECK = 0.02  # seconds between looks at the user's lock


@bp.post("/stop")
def stop():
    user_id, _ = authenticated(TokenOnlySchema)
    site = current_site()
    coordinator = site.coordinator
    if not coordinator.user_busy(user_id):
        raise ApiError(404, "nothing to stop")
    deadline = time.monotonic() + site.stop_timeout
    resend = 0.0
    while coordinator.user_busy(user_id):
        now = time.monotonic()
        if now >= deadline:
            raise ApiError(503, "the request did not stop in time", headers={"Retry-After": "1"})
        if now >= resend:
            coordinator.request_stop(user_id)
            resend = now + RESEND
        time.sleep(CHECK)
    return {"status": "ok", "msg": "stopped"}
