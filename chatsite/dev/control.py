"""The ``/dev/*`` endpoints: read the counters and records, inject failures and misbehaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fields import DevHttpError, field
from .openai import REASONING_FIELDS

if TYPE_CHECKING:
    from .server import DevHandler, Route

SWITCHES = ("skip_done", "skip_sentinel", "repeat_ids", "same_index", "bad_arguments")
MISBEHAVIOURS = {"tags", "show", "error", "linger", "reasoning_field", "finish_reason", *SWITCHES}


def stats(handler: DevHandler, _body: Any) -> None:
    handler.send_json(200, handler.server.state.stats())


def records(handler: DevHandler, _body: Any) -> None:
    handler.send_json(200, {"requests": handler.server.state.records()})


def reset(handler: DevHandler, _body: Any) -> None:
    handler.server.state.reset()
    handler.send_json(200, {"status": "ok"})


def fail(handler: DevHandler, body: Any) -> None:
    body = body if isinstance(body, dict) else {}
    status, count = field(body, "status", int, 503), field(body, "count", int, 1)
    error = field(body, "error", str, "injected failure")
    if not 400 <= status <= 599:
        raise DevHttpError(400, "status must be between 400 and 599")
    handler.server.state.fail_next(status, count, error)
    handler.send_json(200, {"status": status, "count": count, "error": error})


def misbehave(handler: DevHandler, body: Any) -> None:
    how = body if isinstance(body, dict) else {}
    unknown = set(how) - MISBEHAVIOURS
    if unknown:
        raise DevHttpError(400, f"unknown misbehaviour {sorted(unknown)}")
    field(how, "error", str, "")
    field(how, "finish_reason", str, "")
    for switch in SWITCHES:
        field(how, switch, bool, False)
    if how.get("reasoning_field", REASONING_FIELDS[0]) not in REASONING_FIELDS:
        raise DevHttpError(400, f"reasoning_field must be one of {', '.join(REASONING_FIELDS)}")
    linger = how.get("linger", 0)
    if isinstance(linger, bool) or not isinstance(linger, int | float) or not linger >= 0:
        raise DevHttpError(400, "linger must be a number of seconds")
    handler.server.state.misbehave(how)
    handler.send_json(200, how)


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/dev/stats"): stats,
    ("GET", "/dev/requests"): records,
    ("POST", "/dev/reset"): reset,
    ("POST", "/dev/fail"): fail,
    ("POST", "/dev/misbehave"): misbehave,
}
