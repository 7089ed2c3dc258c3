"""Read a request: the JSON object, then the token, then the schema; then the user."""

from typing import Any

import orjson
from flask import Flask, current_app, request
from marshmallow import Schema
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import ApiError
from ..operations import requestlog
from ..site import current_site
from ..storage.tables import User
from ..storage.users import NoUserData, UserNotSetUp, require_user
from .schemas import Limits

EXTENSION = "chatsite.bodies"


class BodySchemas:
    """The app's request limits, and one shared instance per body schema built with them.

    Sharing is safe: loading keeps no state on a schema.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._schemas: dict[type[Schema], Schema] = {}

    def get(self, schema_class: type[Schema]) -> Schema:
        """The app's instance of `schema_class`."""
        instance = self._schemas.get(schema_class)
        if instance is None:
            instance = self._schemas[schema_class] = schema_class(limits=self.limits)
        return instance


def init_app(app: Flask) -> None:
    """Read the request limits from the configuration (raises on invalid ones)."""
    app.extensions[EXTENSION] = BodySchemas(Limits.from_config(app.config))


def body_schemas() -> BodySchemas:
    """The running app's limits and body schemas."""
    return current_app.extensions[EXTENSION]


def read_body() -> bytes:
    """The raw body; past MAX_CONTENT_LENGTH a 413, whether it is sized or chunked."""
    raw = request.get_data(cache=False)  # raises 413 when Content-Length is past the limit
    limit = request.max_content_length
    # A chunked body is cut at the limit without a word: one byte more means too large.
    at_limit = request.content_length is None and limit is not None and len(raw) >= limit
    if at_limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def json_object() -> dict[str, Any]:
    """Parse the body as a JSON object, or raise a 400."""
    raw = read_body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body must be valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def authenticated(schema: type[Schema]) -> tuple[str, dict[str, Any]]:
    """Return the signed-in user's uuid and the validated body.

    The token is checked before anything else in the body, so a bad token is a 401
    whatever else is wrong.
    """
    body = json_object()
    user_id = current_site().tokens.user_id(body.get("token"))
    requestlog.note_user(user_id)  # for the request's log line
    return user_id, body_schemas().get(schema).load(body)


def user_record(user_id: str) -> User:
    """The user's record, created on first sight when allowed; else NoUserData."""
    return require_user(user_id, current_site().auto_create_users)


def user_to_serve(user_id: str) -> User:
    """The record of a user that an endpoint creates something for; else UserNotSetUp.

    The contract answers the two differently (see `errors.DOMAIN_ERRORS`).
    """
    try:
        return user_record(user_id)
    except NoUserData as error:
        raise UserNotSetUp(*error.args) from None
