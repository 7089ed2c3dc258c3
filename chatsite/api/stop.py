"""POST /stop: end this user's /chat or /generate in flight, wherever it runs."""

import time

from flask import Blueprint

from ..coordination import Lease
from ..errors import ApiError
from ..site import Site, current_site
from .body import authenticated
from .schemas import TokenOnlySchema

bp = Blueprint("stop", __name__)

RESEND = 0.25  # seconds: a request that had not yet set up its stop watch hears the next one
CHECK = 0.02  # seconds between looks at the user's lock
NOT_STOPPED = "the request did not stop in time"


def not_stopped() -> ApiError:
    return ApiError(503, NOT_STOPPED, headers={"Retry-After": "1"})


def stop_in_flight(site: Site, user_id: str) -> bool:
    """Stop the user's request in flight and wait until it has ended (its reply saved, the
    user free again); False when there was none. A 503 when it did not end in time."""
    coordinator = site.coordinator
    if not coordinator.user_busy(user_id):
        return False
    deadline = time.monotonic() + site.stop_timeout
    resend = 0.0
    while coordinator.user_busy(user_id):
        now = time.monotonic()
        if now >= deadline:
            raise not_stopped()
        if now >= resend:
            coordinator.request_stop(user_id)
            resend = now + RESEND
        time.sleep(CHECK)
    return True


def hold_user(site: Site, user_id: str) -> Lease:
    """Stop whatever the user has in flight and take their lock, so nothing new starts
    (a delete then runs alone); the caller releases it. A 503 when it cannot in time."""
    deadline = time.monotonic() + site.stop_timeout
    while (lease := site.coordinator.try_lock_user(user_id)) is None:
        if time.monotonic() >= deadline:
            raise not_stopped()
        stop_in_flight(site, user_id)
    return lease


@bp.post("/stop")
def stop():
    user_id, _ = authenticated(TokenOnlySchema)
    if not stop_in_flight(current_site(), user_id):
        raise ApiError(404, "nothing to stop")
    return {"status": "ok", "msg": "stopped"}
