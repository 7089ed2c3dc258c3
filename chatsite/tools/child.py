"""A tool process (`python -m chatsite.tools READ_FD WRITE_FD`), started by a worker.

It runs one tool call at a time and may be SIGKILLed at any moment by the worker that
started it (a call past its time limit); nothing here holds state worth keeping. It opens
its own database connection (a connection never crosses a process boundary) and exits when
its worker goes away, even in the middle of a runaway tool.
"""

import contextlib
import importlib
import json
import logging
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..storage.database import db, open_database
from .context import ToolContext, utc_now
from .wire import HEADER, MAX_TRACEBACK_CHARS, ToolCall, ToolReply, cap_result, frame

log = logging.getLogger(__name__)

READY = b"ready"
ORPHAN_CHECK_SECONDS = 1.0

_functions: dict[tuple[str, str], Callable[..., object]] = {}
_database_url: str | None = None


def resolve(module: str, qualname: str) -> Callable[..., object]:
    """Import a tool function by its module and qualified name."""
    key = (module, qualname)
    if key not in _functions:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        _functions[key] = target
    return _functions[key]


def run(call: ToolCall) -> ToolReply:
    """Call the tool; a non-str return value becomes JSON, an exception a described error."""
    try:
        _use_database(call.database_url)
        fn = resolve(call.module, call.qualname)
        now = call.now
        clock = utc_now if now is None else (lambda: now)
        context = ToolContext(user_id=call.user_id, transcripts=call.transcripts, now=clock)
        value = fn(context, **call.kwargs)
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, default=str)
        return ToolReply(content=cap_result(value))
    except BaseException as exc:  # whatever the tool raised, SystemExit included
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        trace = traceback.format_exc()[-MAX_TRACEBACK_CHARS:]
        return ToolReply(error=cap_result(detail), traceback=trace)


def _use_database(url: str | None) -> None:
    """Bind the database the calling app uses (tests run many apps against one pool)."""
    global _database_url
    if url is None or url == _database_url:
        return
    if db.obj is not None and not db.is_closed():
        db.close()
    db.initialize(open_database(url))
    _database_url = url


def _read_exactly(fd: int, size: int) -> bytes | None:
    """Read `size` bytes; None when the worker closed the pipe (it is gone or done)."""
    chunks, needed = [], size
    while needed:
        chunk = os.read(fd, needed)
        if not chunk:
            return None
        chunks.append(chunk)
        needed -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _exit_when_orphaned(parent: int) -> None:
    """A runaway tool never reads EOF: leave when the worker that started us is gone."""
    while True:
        time.sleep(ORPHAN_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


def serve(read_fd: int, write_fd: int) -> None:
    """Answer calls until the worker closes the pipe."""
    _write_all(write_fd, frame(READY))
    while True:
        header = _read_exactly(read_fd, HEADER.size)
        if header is None:
            return
        payload = _read_exactly(read_fd, HEADER.unpack(header)[0])
        if payload is None:
            return
        try:
            call = pickle.loads(payload)  # written by our own worker, never by a tool
        except Exception as exc:
            reply = ToolReply(error=f"the call could not be read: {type(exc).__name__}: {exc}")
        else:
            reply = run(call)
        _write_all(write_fd, frame(reply.encode()))


def main(argv: list[str]) -> None:
    """Serve the worker on the pipes whose descriptors are in argv."""
    logging.basicConfig(
        level=os.environ.get("CHATSITE_LOG_LEVEL", "info").upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    read_fd, write_fd = int(argv[1]), int(argv[2])
    watchdog = threading.Thread(
        target=_exit_when_orphaned, args=(os.getppid(),), name="orphan-check", daemon=True
    )
    watchdog.start()
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):  # the worker went away
        serve(read_fd, write_fd)
