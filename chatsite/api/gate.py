"""The gate before /chat and /generate stream: the model, the user's lock, then admission.

Admission (a place in line, a slot, the upstream stream) is `llm.pool.Admission`'s job;
this module starts it and turns its outcome into the response.
"""

import select
import socket
from collections.abc import Callable
from typing import Any

from flask import Response, request

from ..coordination import Lease
from ..coordination.base import UserBusy
from ..errors import ApiError
from ..llm.errors import UNAUTHORIZED, InstanceMisconfigured, NoInstanceAvailable, UnknownModel
from ..site import Site
from ..storage.database import db
from ..storage.tables import User
from ..streaming.detached import DetachedAnswer, FollowedAnswer
from ..streaming.reply import StreamedReply, ndjson_response


def choose_model(site: Site, requested: str | None, user: User) -> tuple[str, set[str]]:
    """Return the model to use (the request's, else the user's) and its capabilities.

    The model is named as the catalog lists it (`echo` is `echo:latest` on Ollama).
    """
    wanted = requested or user.preferred_model
    if not wanted:
        raise ApiError(400, "model: no model given and no preferred model set")
    model = site.catalog.resolve(wanted)
    capabilities = None if model is None else site.catalog.capabilities(model)
    if model is None or capabilities is None:
        if not site.catalog.reachable():
            if site.catalog.key_refused():  # the operator's to mend: say so
                raise InstanceMisconfigured(UNAUTHORIZED)
            raise NoInstanceAvailable()
        raise UnknownModel(f"model: unknown model {wanted!r}")
    return model, capabilities


def check_options(site: Site, model: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options, unless one of them cannot reach an instance serving the model (400).

    An option has no equivalent on every wire (`mirostat` on the OpenAI API): it is
    refused rather than dropped, so a client never believes a setting was used.
    """
    unsupported = site.catalog.unsupported_options(model, options)
    if unsupported:
        name = unsupported[0]
        raise ApiError(
            400, f"options.{name}: not supported for model {model!r} (its chat server has none)"
        )
    return options


def lock_user(site: Site, user_id: str, chat_id: str | None = None) -> Lease:
    """Take the user's lock, or fail at once with UserBusy, before any waiting.

    `chat_id`, the chat the request writes, is "generating" while the lock is held.
    """
    lease = site.coordinator.try_lock_user(user_id, chat_id)
    if lease is None:
        raise UserBusy()
    return lease


def client_watch(environ: dict[str, Any]) -> Callable[[], bool]:
    """A check that the client has closed its connection, for requests waiting in line.

    The body has been read, so a readable socket with nothing to read is the client gone.
    """
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone


def start_reply(
    site: Site,
    reply: StreamedReply,
    user_id: str,
    queue_updates: bool,
    chat_id: str | None = None,
) -> Response:
    """Admit the reply's request and return its stream; on any failure free everything.

    With `chat_id` (a /chat with a chatfile) the answer outlives its client: it is produced
    in a greenlet of its own into the chat's answer log, which the response only reads.

    A request that finds its model's line empty and a slot free goes at once. Else it
    waits in line: here (a 504 when its time runs out), or, with `queue_updates`, inside a
    stream that starts now with its place in line. The request's database connection goes
    back first: nothing from here on uses it, and a held pooled connection would starve the
    worker's other requests while this one waits.
    """
    if not db.is_closed():
        db.close()
    try:
        reply.stop_watch = site.coordinator.watch_stop(user_id, reply.stop)
        reply.client_gone = client_watch(request.environ)
        steps = reply.admission.steps()
        position = next(steps, None)
        if position is None:
            reply.admitted()
        elif queue_updates:
            reply.wait_in_stream(steps, position)
        else:
            reply.wait_here(steps)
    except BaseException:  # QueueFull, ClientGone, ...: `errors.DOMAIN_ERRORS` answers
        reply.release()
        raise
    if chat_id is None:
        return ndjson_response(reply)
    answer = site.line_logs.start(user_id, chat_id)
    body = FollowedAnswer(answer.follow(0))  # attached before the first line exists
    DetachedAnswer(reply, answer, site.detached_max).start()
    return ndjson_response(body)
