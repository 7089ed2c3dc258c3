"""One error shape for the whole API, `{"status": "error", "msg": ...}`, and one table.

Domain code raises its own exceptions and knows nothing of HTTP; `DOMAIN_ERRORS` says,
in this one place, what each one answers: its code, its text, its status and its headers.
The HTTP edge (`chatsite/api/`) raises `ApiError` for what only it can judge.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import peewee
from flask import Flask, jsonify
from marshmallow import ValidationError
from playhouse.pool import MaxConnectionsExceeded
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from .auth import SignInRefused, SignInUnavailable
from .coordination.base import UserBusy
from .llm.errors import (
    InstanceFailed,
    InstanceMisconfigured,
    InstanceRefused,
    NoInstanceAvailable,
    QueueFull,
    UnknownModel,
)
from .site import Site, current_site
from .storage.chats import ChatLimitReached, ChatNotCreated, ChatNotFound, ChatStorageFull
from .storage.search import EmptySearch
from .storage.users import NO_USER_DATA, NoUserData, UserNotSetUp
from .streaming.reply import ClientGone

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


@dataclass(frozen=True)
class Answer:
    """What the client gets for a domain error; `msg` None: the error's own text."""

    code: int
    msg: str | None = None
    status: str = "error"
    headers: Callable[[Site], dict[str, str]] | None = None  # from the running site

    def response(self, error: Exception):
        """The error response for `error`."""
        headers = self.headers(current_site()) if self.headers else None
        return error_response(self.code, self.msg or str(error), self.status, headers)


def retry_after(seconds: Callable[[Site], int]) -> Callable[[Site], dict[str, str]]:
    """A `Retry-After` header whose seconds come from the site's configuration."""
    return lambda site: {"Retry-After": str(seconds(site))}


# The domain's own exceptions, and what each one means for the client.
DOMAIN_ERRORS: dict[type[Exception], Answer] = {
    SignInRefused: Answer(401),
    SignInUnavailable: Answer(503),
    UserBusy: Answer(429, headers=retry_after(lambda site: site.retry_after)),
    QueueFull: Answer(503, headers=retry_after(lambda site: site.queue_retry_after)),
    ClientGone: Answer(499, "client closed the request"),
    NoInstanceAvailable: Answer(504),
    UnknownModel: Answer(400),
    InstanceRefused: Answer(400),
    InstanceFailed: Answer(500),
    InstanceMisconfigured: Answer(502),  # a chat server refused chatsite's own key
    ChatNotFound: Answer(404, "chat not found"),
    ChatLimitReached: Answer(400),
    ChatStorageFull: Answer(400),
    ChatNotCreated: Answer(500),
    EmptySearch: Answer(400),
    NoUserData: Answer(500, NO_USER_DATA),  # reading or changing settings
    UserNotSetUp: Answer(400, NO_USER_DATA, status="nodata"),  # creating or generating
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
        return DOMAIN_ERRORS[type(error)].response(error)

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
