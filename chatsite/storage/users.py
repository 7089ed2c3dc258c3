"""Users and their preferences."""

import logging
import weakref

from peewee import Database, IntegrityError

from .chats import list_chats
from .database import db, write_transaction
from .tables import User, stored_now

log = logging.getLogger(__name__)


# The SELECT of one user by uuid, as SQL text per database (engines differ in parameter
# style). Peewee would build the same query for every request, which costs several times
# more than running it; the text is built once and run with the uuid as its parameter.
_BY_UUID: "weakref.WeakKeyDictionary[Database, str]" = weakref.WeakKeyDictionary()


def _get_user(user_id: str) -> User | None:
    """The user's record, or None."""
    database = db.obj
    sql = _BY_UUID.get(database)
    if sql is None:
        sql = _BY_UUID[database] = User.select().where(User.uuid == "").sql()[0]
    return next(iter(User.raw(sql, user_id)), None)


def find_user(user_id: str, create: bool) -> User | None:
    """Return the user's record, creating it on first sight when allowed."""
    user = _get_user(user_id)
    if user is None and create:
        try:
            with write_transaction():  # SQLite: waits for the write lock at BEGIN, cooperatively
                User.insert(uuid=user_id).on_conflict_ignore().execute()
        except IntegrityError:  # pragma: no cover - a racing insert won; read it below
            pass
        user = _get_user(user_id)
        log.info("created user record %s", user_id)
    return user


NO_USER_DATA = "No user data found"


class NoUserData(LookupError):
    """The user has no record, and records are not created automatically."""


class UserNotSetUp(NoUserData):
    """NoUserData for a request that creates something (a chat, a reply).

    The client is told to set the user up first, where reading settings is a server error.
    """


def require_user(user_id: str, create: bool) -> User:
    """Return the user's record, or raise NoUserData."""
    user = find_user(user_id, create)
    if user is None:
        raise NoUserData(user_id)
    return user


def user_prefs(user: User, max_chats: int) -> dict:
    """Serialize the user's preferences as /settings answers them.

    Only the newest `max_chats` chats (SETTINGS_CHAT_FILES) are listed, in the contract's
    `{"id", "name"}` shape, so the answer stays small whatever the number of chats;
    /list-chats pages through all of them (and tells which one is generating).
    """
    chats, _ = list_chats(user.uuid, max_chats)
    files = [{"id": chat.id, "name": chat.name} for chat in chats]
    return {
        "uuid": user.uuid,
        "nickname": user.nickname,
        "prompt_data": {"system": user.system_prompt},
        "site_prefs": {"model": user.preferred_model},
        "chat_files": {"files": files},
    }


def update_prefs(user_id: str, prefs: dict, create: bool) -> User:
    """Apply a partial, already validated update in one transaction."""
    changes = {}
    if "nickname" in prefs:
        changes[User.nickname] = prefs["nickname"]
    if "system" in prefs.get("prompt_data", {}):
        changes[User.system_prompt] = prefs["prompt_data"]["system"]
    if "model" in prefs.get("site_prefs", {}):
        changes[User.preferred_model] = prefs["site_prefs"]["model"]
    with write_transaction():
        user = require_user(user_id, create)
        if changes:
            changes[User.updated_at] = stored_now()
            User.update(changes).where(User.uuid == user_id).execute()
            user = User.get(User.uuid == user_id)
    return user
