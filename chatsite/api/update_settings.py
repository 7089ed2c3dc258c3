"""POST /update-settings: a partial update of the user's preferences."""

from flask import Blueprint

from ..schemas import UpdateSettingsSchema
from ..site import current_site
from ..users import update_prefs, user_prefs
from .body import authenticated

bp = Blueprint("update_settings", __name__)


@bp.post("/update-settings")
def update_settings():
    user_id, data = authenticated(UpdateSettingsSchema)
    site = current_site()
    user = update_prefs(user_id, data["prefs"], site.auto_create_users)
    return {"status": "ok", "msg": "settings updated", "userprefs": user_prefs(user)}
