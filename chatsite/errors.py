"""One error shape for the whole API: `{"status": "error", "msg": ...}`."""

import logging

import peewee
from flask import Flask, jsonify
from marshmallow import ValidationError
from playhouse.pool import MaxConnectionsExceeded
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from .llm.errors import (
    InstanceFailed,
    InstanceMisconfigured,
    InstanceRefused,
    NoInstanceAvailable,
    UnknownModel,
)
from .storage.chats import ChatLimitReached, ChatNotCreated, ChatNotFound, ChatStorageFull
from .storage.users import NO_USER_DATA, NoUserData

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client should see, with its HTTP code."""

    def __init__(
        self, code: int, msg: str, status: str = "error", headers: dict | None = None
    ) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or {}


# The domain's own exceptions, and the HTTP code each one means for the client.
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str | None]] = {
    NoInstanceAvailable: (504, None),
    UnknownModel: (400, None),
    InstanceRefused: (400, None),
    InstanceFailed: (500, None),
    InstanceMisconfigured: (502, None),
    ChatNotFound: (404, "chat not found"),
    ChatLimitReached: (400, None),
    ChatStorageFull: (400, None),
    ChatNotCreated: (500, None),
    NoUserData: (500, NO_USER_DATA),
}


def error_response(code: int, msg: str, status: str = "error", headers: dict | None = None):
    """Build the JSON error response every endpoint uses."""
    response = jsonify(status=status, msg=msg)
    response.status_code = code
    response.headers.update(headers or {})
    return response


def describe_validation_error(messages: dict | list | str, prefix: str = "") -> str:
    """Flatten marshmallow's nested messages into "field: reason; ..."."""
    if isinstance(messages, dict):
        parts = []
        for field, inner in messages.items():
            name = f"{prefix}.{field}" if prefix else str(field)
            if field == "_schema":
                name = prefix or "body"
            parts.append(describe_validation_error(inner, name))
        return "; ".join(parts)
    if isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            return f"{prefix}: {' '.join(messages)}" if prefix else " ".join(messages)
        return "; ".join(describe_validation_error(m, prefix) for m in messages)
    return f"{prefix}: {messages}" if prefix else str(messages)


def register_error_handlers(app: Flask) -> None:
    """Turn every exception into the API's error shape; never leak internals."""

    @app.errorhandler(ApiError)
    def handle_api_error(error: ApiError):
        return error_response(error.code, error.msg, error.status, error.headers)

    def handle_domain_error(error: Exception):
        code, msg = DOMAIN_ERRORS[type(error)]
        return error_response(code, msg or str(error))

    for domain_error in DOMAIN_ERRORS:
        app.register_error_handler(domain_error, handle_domain_error)

    @app.errorhandler(ValidationError)
    def handle_validation_error(error: ValidationError):
        return error_response(400, describe_validation_error(error.messages))

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException):
        msg = {413: "request body too large"}.get(error.code, error.description)
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return error_response(error.code or 500, msg, headers=headers)

    @app.errorhandler(peewee.OperationalError)
    @app.errorhandler(peewee.InterfaceError)
    @app.errorhandler(MaxConnectionsExceeded)
    @app.errorhandler(RedisError)
    def handle_backend_down(error: Exception):
        log.error("backend unavailable: %s: %s", type(error).__name__, error)
        return error_response(503, "service temporarily unavailable")

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error")
