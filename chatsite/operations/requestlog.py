"""One record per request: its id, who asked, what it used, and one log line at its end.

The record lives in a context variable (each gevent greenlet and each thread has its own),
so log lines written while the request runs carry its id, and a streamed answer, which runs
after the view has returned, still finds the record its view started with.

The request id comes from nginx (`X-Request-ID`, see deploy/nginx.conf) when it is sane, or
is made here; the answer echoes it, so a client's report can be matched with the logs.
"""

import itertools
import logging
import os
import re
import secrets
import time
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# What nginx's $request_id (32 hex digits), a uuid or a tracing id looks like; anything else
# is replaced, so that no client writes arbitrary text into the logs.
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_current: ContextVar["RequestRecord | None"] = ContextVar("chatsite_request", default=None)

# Ids made here: a random prefix per process and a serial number, 32 hex digits like nginx's
# (a uuid4 per request costs a system call and an object; this costs neither).
_serial = itertools.count(1)
_prefix = ""


def _new_prefix() -> None:
    global _prefix
    _prefix = secrets.token_hex(12)


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)  # a forked worker must not repeat ids


class RequestRecord:
    """What one request did, filled in as it goes; `write()` logs it once."""

    __slots__ = (
        "complete",
        "endpoint",
        "instance",
        "log_it",
        "method",
        "model",
        "queue_wait",
        "request_id",
        "started",
        "status",
        "streaming",
        "tokens",
        "user_id",
        "written",
    )

    def __init__(self, request_id: str, method: str, endpoint: str, log_it: bool) -> None:
        self.request_id = request_id
        self.method = method
        self.endpoint = endpoint
        self.log_it = log_it
        self.started = time.monotonic()
        self.user_id: str | None = None
        self.status: int | None = None
        self.model: str | None = None
        self.instance: str | None = None
        self.queue_wait: float | None = None
        self.tokens: int | None = None
        self.complete: bool | None = None
        self.streaming = False
        self.written = False

    def note_slot(self, model: str, instance: str, waited: float) -> None:
        """Remember the model, the instance and the wait of a streamed answer."""
        self.streaming = True
        self.model = model
        self.instance = instance
        self.queue_wait = round(waited, 4)

    def stream_ended(self, tokens: int, complete: bool) -> None:
        """The stream is over, whole or cut short: its request is done."""
        self.tokens = tokens
        self.complete = complete
        if self.status is not None:  # else it never streamed: the answer's hook writes it
            self.write()

    def fields(self) -> dict[str, Any]:
        """The record as log fields, leaving out what this request never had."""
        fields = {
            "request_id": self.request_id,
            "method": self.method,
            "endpoint": self.endpoint,
            "status": self.status,
            "duration": round(time.monotonic() - self.started, 4),
            "user_id": self.user_id,
            "model": self.model,
            "instance": self.instance,
            "queue_wait": self.queue_wait,
            "tokens": self.tokens,
            "complete": self.complete,
        }
        return {key: value for key, value in fields.items() if value is not None}

    def write(self) -> None:
        """Log the request's line, once, when the app logs requests (LOG_FORMAT=json)."""
        if self.written or not self.log_it:
            return
        self.written = True
        fields = self.fields()
        log.info(
            "%s %s %s %.3fs",
            self.method,
            self.endpoint,
            self.status,
            fields["duration"],
            extra={"request": fields},
        )


def request_id_from(header: str | None) -> str:
    """The proxy's request id if it looks like one, else a new one."""
    if header and SANE_REQUEST_ID.match(header):
        return header
    return f"{_prefix}{next(_serial) & 0xFFFFFFFF:08x}"


def begin(request_id: str, method: str, endpoint: str, log_it: bool) -> RequestRecord:
    """Start the record of the request this greenlet (or thread) now serves."""
    record = RequestRecord(request_id, method, endpoint, log_it)
    _current.set(record)
    return record


def current() -> RequestRecord | None:
    """The record of the request being served here, if any."""
    return _current.get()


def current_request_id() -> str | None:
    """The id of the request being served here, for log lines."""
    record = _current.get()
    return record.request_id if record is not None else None


def note_user(user_id: str) -> None:
    """Remember who is asking (once the token is verified)."""
    record = _current.get()
    if record is not None:
        record.user_id = user_id
