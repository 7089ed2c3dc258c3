"""POST /models: the models the chat instances serve, with their capabilities."""

from flask import Blueprint

from ..site import current_site
from .body import authenticated
from .schemas import TokenOnlySchema

bp = Blueprint("models", __name__)


@bp.post("/models")
def models():
    authenticated(TokenOnlySchema)
    return {"status": "ok", "models": current_site().catalog.models()}
