"""POST /update-settings: a partial update of the user's preferences."""

from flask import Blueprint

from ..errors import ApiError
from ..llm.protocols.ollama import normalize_model
from ..site import Site, current_site
from ..storage.users import update_prefs
from .body import authenticated
from .schemas import UpdateSettingsSchema
from .settings import prefs_answer

bp = Blueprint("update_settings", __name__)


def offered_model(site: Site, requested: str) -> str:
    """The model named as the catalog lists it; while no instance answers, as Ollama would."""
    model = site.catalog.resolve(requested)
    if model is not None:
        return model
    if site.catalog.reachable():
        raise ApiError(400, f"prefs.site_prefs.model: unknown model {requested!r}")
    return normalize_model(requested)


@bp.post("/update-settings")
def update_settings():
    user_id, data = authenticated(UpdateSettingsSchema)
    site = current_site()
    site_prefs = data["prefs"].get("site_prefs", {})
    if site_prefs.get("model"):
        site_prefs["model"] = offered_model(site, site_prefs["model"])
    user = update_prefs(user_id, data["prefs"], site.auto_create_users)
    return {"status": "ok", "msg": "settings updated", "userprefs": prefs_answer(user)}
