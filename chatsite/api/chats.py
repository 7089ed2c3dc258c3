"""The chat endpoints in one blueprint: create, read, search, export, import (and, as they
come, list, rename, delete)."""

from flask import Blueprint, Response

from ..clock import utc_stamp
from ..site import current_site
from ..storage.chats import create_chat as create_chat_for
from ..storage.chats import read_chat
from ..storage.export import export_json, export_markdown, stamp, user_settings
from ..storage.imports import import_chats as import_chats_for
from ..storage.search import search_chats as find_chats
from .body import authenticated, user_record, user_to_serve
from .chat_data import ExportSchema, ImportChatsSchema, SearchChatsSchema
from .schemas import ChatIdSchema, TokenOnlySchema

bp = Blueprint("chats", __name__)


@bp.post("/create-chat")
def create_chat():
    """A new, empty chat named "New chat"."""
    user_id, _ = authenticated(TokenOnlySchema)
    site = current_site()
    user_to_serve(user_id)
    chat_id = create_chat_for(site.transcripts, user_id, site.max_chats, site.max_storage)
    return {"status": "ok", "msg": "chat created", "chatId": chat_id}


@bp.post("/get-chat")
def get_chat():
    """The messages of one of the user's chats."""
    user_id, data = authenticated(ChatIdSchema)
    contents = read_chat(current_site().transcripts, user_id, str(data["chatId"]))
    return {"status": "ok", "msg": "", "contents": contents}


@bp.post("/search-chats")
def search_chats():
    """The user's chats holding every word of `q`, newest first, each with a snippet."""
    user_id, data = authenticated(SearchChatsSchema)
    hits = find_chats(current_site().transcripts, user_id, data["q"], data["limit"])
    found = [
        {
            "id": hit.chat_id,
            "name": hit.name,
            "created_at": stamp(hit.created_at),
            "updated_at": stamp(hit.updated_at),
            "snippet": hit.snippet,
        }
        for hit in hits
    ]
    return {"status": "ok", "chats": found}


@bp.post("/export")
def export():
    """Everything kept about the user, streamed as one JSON (or Markdown) download."""
    user_id, data = authenticated(ExportSchema)
    settings = user_settings(user_record(user_id))
    transcripts = current_site().transcripts
    day = utc_stamp()[:10]
    if data["format"] == "markdown":
        pieces, media, suffix = export_markdown(transcripts, settings), "text/markdown", "md"
    else:
        pieces, media, suffix = export_json(transcripts, settings), "application/json", "json"
    response = Response(pieces, mimetype=media)
    response.headers["Content-Disposition"] = (
        f'attachment; filename="chatsite-export-{day}.{suffix}"'
    )
    return response


@bp.post("/import-chats")
def import_chats():
    """An export's chats, taken back as new chats of this user, each whole or not at all."""
    user_id, data = authenticated(ImportChatsSchema)
    site = current_site()
    user_to_serve(user_id)
    seeds = data["document"]["chats"]
    report = import_chats_for(site.transcripts, user_id, seeds, site.max_chats, site.max_storage)
    return {
        "status": "ok",
        "msg": f"{len(report.imported)} of {len(seeds)} chats imported",
        "chats": [{"id": chat_id, "name": name} for chat_id, name in report.imported],
        "refused": [{"index": index, "msg": reason} for index, reason in report.refused],
    }
