"""Admission to /chat and /generate, decided before streaming: model, user lock, slot."""

from typing import Any

from ..coordination import Lease
from ..errors import ApiError
from ..llm.client import InstanceStream
from ..llm.errors import NoInstanceAvailable, UnknownModel
from ..llm.pool import Slot
from ..site import Site
from ..storage.database import db
from ..storage.tables import User

BUSY = "a request from this user is already being processed"


def choose_model(site: Site, requested: str | None, user: User) -> tuple[str, set[str]]:
    """Return the model to use (the request's, else the user's) and its capabilities."""
    model = requested or user.preferred_model
    if not model:
        raise ApiError(400, "model: no model given and no preferred model set")
    capabilities = site.catalog.capabilities(model)
    if capabilities is None:
        if not site.catalog.reachable():
            raise NoInstanceAvailable()
        raise UnknownModel(f"model: unknown model {model!r}")
    return model, capabilities


def lock_user(site: Site, user_id: str) -> Lease:
    """Take the user's lock or answer 429 at once, before any waiting."""
    lease = site.coordinator.try_lock_user(user_id)
    if lease is None:
        raise ApiError(429, BUSY, headers={"Retry-After": str(site.retry_after)})
    return lease


def open_upstream(
    site: Site, user_lease: Lease, model: str, path: str, payload: dict[str, Any]
) -> tuple[Slot, InstanceStream]:
    """Start the upstream stream; on any failure give the user's lock back.

    The request's database connection goes back first: nothing from here on uses it, and
    waiting for a slot can take INSTANCE_WAIT_TIMEOUT seconds, during which a held pooled
    connection would starve every other request of the worker.
    """
    if not db.is_closed():
        db.close()
    try:
        return site.pool.open_stream(model, path, payload)
    except BaseException:
        user_lease.release()
        raise
