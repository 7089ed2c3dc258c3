"""POST /resume: follow the user's answer of a chat again, from a line on, wherever it runs."""

from flask import Blueprint

from ..errors import ApiError
from ..site import current_site
from ..storage.database import db
from ..streaming.detached import FollowedAnswer
from ..streaming.reply import ndjson_response
from .body import authenticated
from .schemas import ResumeSchema

bp = Blueprint("resume", __name__)

NOTHING = "nothing to resume"


@bp.post("/resume")
def resume():
    user_id, data = authenticated(ResumeSchema)
    if not db.is_closed():
        db.close()  # nothing from here on uses it: a follower must not hold a pooled one
    # The log is the user's own by its key: another user's chat is never found.
    reader = current_site().line_logs.follow(user_id, str(data["chatId"]), data["start"])
    if reader is None:
        raise ApiError(404, NOTHING)
    return ndjson_response(FollowedAnswer(reader, data["start"]))
