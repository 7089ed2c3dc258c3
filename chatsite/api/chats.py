"""The chat endpoints in one blueprint: create, read, list, rename, delete, search, export,
import; and deleting the account, which is mostly deleting chats."""

from flask import Blueprint, Response

from ..clock import stamp_of, utc_stamp
from ..errors import ApiError
from ..ids import canonical_uuid
from ..site import Site, current_site
from ..storage.accounts import delete_account as delete_account_of
from ..storage.chats import create_chat as create_chat_for
from ..storage.chats import delete_chat as delete_chat_of
from ..storage.chats import find_chat, list_chats, read_chat, rename_chat
from ..storage.export import export_json, export_markdown, user_settings
from ..storage.imports import import_chats as import_chats_for
from ..storage.search import search_chats as find_chats
from .body import authenticated, user_record, user_to_serve
from .chat_data import ExportSchema, ImportChatsSchema, SearchChatsSchema
from .generating import generating, generating_chat
from .schemas import (
    ChatIdSchema,
    DeleteAccountSchema,
    ListChatsSchema,
    RenameChatSchema,
    TokenOnlySchema,
)
from .stop import hold_user

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
    site = current_site()
    chat_id = str(data["chatId"])
    contents = read_chat(site.transcripts, user_id, chat_id)
    if generating(site, user_id, chat_id):
        contents = answer_in_progress(contents)
    return {"status": "ok", "msg": "", "contents": contents}


def answer_in_progress(contents: list[dict]) -> list[dict]:
    """The chat with its answer so far (as last saved) marked as still being produced."""
    last = contents[-1] if contents else None
    if last is None or last.get("role") != "assistant" or not last.get("incomplete"):
        last = {"role": "assistant", "content": ""}  # not saved yet: nothing so far
        contents = [*contents, last]
    contents[-1] = {**last, "incomplete": True, "generating": True}
    return contents


@bp.post("/list-chats")
def list_chats_page():
    """A page of the user's chats, newest update first, with the cursor of the next."""
    user_id, data = authenticated(ListChatsSchema)
    chats, cursor = list_chats(user_id, data["limit"], data.get("before"))
    in_progress = generating_chat(current_site(), user_id)
    listed = [
        {
            "id": chat.id,
            "name": chat.name,
            "created_at": stamp_of(chat.created_at),
            "updated_at": stamp_of(chat.updated_at),
            "generating": chat.id == in_progress,
        }
        for chat in chats
    ]
    return {"status": "ok", "chats": listed, "next": cursor}


@bp.post("/rename-chat")
def rename_chat_named():
    """Give one of the user's chats a name of their choosing."""
    user_id, data = authenticated(RenameChatSchema)
    rename_chat(user_id, str(data["chatId"]), data["name"])
    return {"status": "ok", "msg": "chat renamed"}


def same_uuid(given: str, user_id: str) -> bool:
    """Whether `given` spells the user's uuid (in any of the ways a uuid is written)."""
    try:
        return canonical_uuid(given.strip()) == user_id
    except ValueError:
        return False


def while_held(site: Site, user_id: str, action) -> None:
    """Stop the user's answer in flight, as /stop does, and run `action` holding their
    lock: no answer starts (nor saves) while it runs."""
    lease = hold_user(site, user_id)
    try:
        action()
    finally:
        lease.release()


@bp.post("/delete-chat")
def delete_chat():
    """Delete one of the user's chats; an answer being written to it is stopped first."""
    user_id, data = authenticated(ChatIdSchema)
    chat_id = str(data["chatId"])
    site = current_site()
    find_chat(user_id, chat_id)  # another user's chat: a 404, and nothing is stopped
    if generating(site, user_id, chat_id):
        while_held(site, user_id, lambda: delete_chat_of(site.transcripts, user_id, chat_id))
    else:
        delete_chat_of(site.transcripts, user_id, chat_id)
    return {"status": "ok", "msg": "chat deleted"}


@bp.post("/delete-account")
def delete_account():
    """Delete everything kept about the user; any answer in progress is stopped first."""
    user_id, data = authenticated(DeleteAccountSchema)
    if not same_uuid(data["confirm"], user_id):
        raise ApiError(400, "confirm: must be your user id (the uuid of your account)")
    site = current_site()
    while_held(site, user_id, lambda: delete_account_of(site.transcripts, user_id))
    return {"status": "ok", "msg": "account deleted"}


@bp.post("/search-chats")
def search_chats():
    """The user's chats holding every word of `q`, newest first, each with a snippet."""
    user_id, data = authenticated(SearchChatsSchema)
    hits = find_chats(current_site().transcripts, user_id, data["q"], data["limit"])
    found = [
        {
            "id": hit.chat_id,
            "name": hit.name,
            "created_at": stamp_of(hit.created_at),
            "updated_at": stamp_of(hit.updated_at),
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
