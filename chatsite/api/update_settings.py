"""POST /update-settings: a partial update of the user's preferences."""

from flask import Blueprint

from ..errors import ApiError
from ..site import current_site
from ..storage.users import update_prefs
from .body import authenticated
from .schemas import UpdateSettingsSchema
from .settings import prefs_answer

bp = Blueprint("update_settings", __name__)


@bp.post("/update-settings")
def update_settings():
    user_id, data = authenticated(UpdateSettingsSchema)
    site = current_site()
    model = data["prefs"].get("site_prefs", {}).get("model")
    if model and site.catalog.capabilities(model) is None and site.catalog.reachable():
        raise ApiError(400, f"prefs.site_prefs.model: unknown model {model!r}")
    user = update_prefs(user_id, data["prefs"], site.auto_create_users)
    return {"status": "ok", "msg": "settings updated", "userprefs": prefs_answer(user)}
