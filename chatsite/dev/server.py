"""The dev instance's HTTP server: read the request, route it, send JSON or a stream.

The protocol modules (``ollama``, ``openai``) and the dev endpoints (``control``) hold the
routes; this module only frames bytes, counts streams and notices clients that went away.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from . import control, ollama, openai
from .fields import DevHttpError
from .state import DevState

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # larger request bodies get 413
MAX_DRAIN = 64 * 1024 * 1024  # oversized bodies up to this are read and dropped so the 413 arrives
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_BAD_JSON = object()  # marks a request body that is not JSON at all

Route = Callable[["DevHandler", Any], None]  # answers a request, given its parsed JSON body
ROUTES: dict[tuple[str, str], Route] = {**ollama.ROUTES, **openai.ROUTES, **control.ROUTES}
FAILABLE = ollama.FAILABLE | openai.FAILABLE  # the paths /dev/fail makes fail
RECORDED = (ollama.PREFIX, openai.PREFIX)  # the API calls /dev/requests shows, /dev/stats counts


def error_body(path: str, err: DevHttpError) -> Any:
    """The error in the shape of the wire the path belongs to."""
    if path.startswith(openai.PREFIX):
        return openai.error_body(err)
    return ollama.error_body(err)


class DevHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"chatsite-devinstance/{ollama.VERSION}"
    disable_nagle_algorithm = True  # one small write per token must leave at once
    server: DevServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_HEAD = do_PUT = do_DELETE = do_GET

    def _dispatch(self) -> None:
        path, state = urlsplit(self.path).path, self.server.state
        recorded = path.startswith(RECORDED)
        try:
            body = self._read_json()
        except DevHttpError as err:
            self.close_connection = True  # the body was not (fully) consumed
            if recorded:
                state.record(path, None)
            return self.send_json(err.status, error_body(path, err))
        if recorded:
            state.record(path, None if body is _BAD_JSON else body)
        try:
            self._route(path, body)
        except DevHttpError as err:
            self.send_json(err.status, error_body(path, err))

    def _route(self, path: str, body: Any) -> None:
        """Check the API key, find the endpoint, inject a pending failure, check the body."""
        if path.startswith(openai.PREFIX):
            openai.authorize(self)
        route = ROUTES.get((self.command, path))
        if route is None:
            if any(p == path for _, p in ROUTES):
                raise DevHttpError(405, "method not allowed")
            raise DevHttpError(404, "not found")
        status, error = self.server.state.take_failure() if path in FAILABLE else (0, "")
        if status:
            log.info("injecting HTTP %d into %s", status, path)
            raise DevHttpError(status, error)
        if self.command == "POST" and body is _BAD_JSON:
            raise DevHttpError(400, "invalid JSON body")
        if self.command == "POST" and path.startswith(RECORDED) and not isinstance(body, dict):
            raise DevHttpError(
                400,
                "missing request body" if body is None else "request body must be a JSON object",
            )
        route(self, None if body is _BAD_JSON else body)

    def _read_json(self) -> Any:
        """Read the body by Content-Length (keeps keep-alive in sync); None if empty."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise DevHttpError(411, "chunked request bodies are not supported, send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise DevHttpError(400, "invalid Content-Length") from None
        if length < 0:
            raise DevHttpError(400, "invalid Content-Length")
        if length > MAX_BODY:
            while 0 < length <= MAX_DRAIN and (chunk := self.rfile.read(min(length, 65536))):
                length -= len(chunk)
            raise DevHttpError(413, f"request body too large (limit {MAX_BODY} bytes)")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return _BAD_JSON

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        """Send a whole body with its length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def stream(self, frames: Iterator[bytes], content_type: str, linger: float = 0.0) -> None:
        """Write each frame as one chunk (hand-made chunked encoding), counting the stream.

        Stops at once if the client went away. ``linger`` keeps the body open that long after
        the last frame, like a quiet server.
        """
        state = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        state.bump("active_streams")
        try:
            self.end_headers()
            for data in frames:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self._linger(linger)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except DISCONNECTS as exc:
            self.close_connection = True
            state.bump("disconnected_streams")
            log.info("client %s went away mid-stream (%s)", self.address_string(), exc)
        else:
            state.bump("completed_streams")
        finally:
            state.bump("active_streams", -1)

    def _linger(self, seconds: float) -> None:
        """Wait before ending the body; a client that hangs up meanwhile ends the wait."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if not readable:
                continue
            if not self.connection.recv(1, socket.MSG_PEEK):
                raise ConnectionResetError("the client closed the connection")
            time.sleep(min(left, 0.05))  # it sent something: not a hang-up


class DevServer(ThreadingHTTPServer):
    """The HTTP server; holds the shared state, the default per-token delay, the API key."""

    daemon_threads = True  # idle keep-alive connections must not block shutdown

    def __init__(
        self, address: tuple[str, int], token_delay: float = 0.0, api_key: str | None = None
    ) -> None:
        super().__init__(address, DevHandler)
        self.token_delay = max(0.0, token_delay)
        self.api_key = api_key or None  # required of /v1/* calls when set
        self.state = DevState()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], DISCONNECTS):
            log.info("client %s went away before the answer was sent", client_address)
        else:
            log.exception("error while handling a request from %s", client_address)
