"""A fast upstream for the benchmark: Ollama's API and the OpenAI API (stdlib asyncio only).

It must never be the bottleneck, so it does as little work per token as possible:

* a minimal HTTP/1.1 parser on ``asyncio.start_server`` (keep-alive, Content-Length or
  chunked request bodies);
* every streamed NDJSON line or server-sent event is built once per (endpoint, model name)
  and then written as a ready-made chunk of the chunked transfer encoding;
* ``fast`` writes its N token lines in large batches (honouring back-pressure);
* ``slow`` paces its tokens with plain ``loop.call_at`` callbacks (no coroutine per token):
  token ``i`` (0-based) is due at ``start + (i + 1) / rate``, so N tokens take N / rate seconds.

Ollama's endpoints: ``GET /api/tags``, ``POST /api/show``, ``POST /api/chat``,
``POST /api/generate``, ``GET /api/version``, ``GET /`` (Ollama's "Ollama is running"). Options
read from the request: ``options.num_predict`` (tokens, default 200) and ``options.bench_rate``
(tokens/s of ``slow``, default 50).

The OpenAI API, as vLLM serves it (base URL ``http://HOST:PORT/v1``): ``GET /v1/models``,
``POST /v1/chat/completions`` and ``POST /v1/completions``, models ``fast`` and ``slow``.
A stream is server-sent events, each ``data: {...}`` event one chunk: for chat a first
``chat.completion.chunk`` with ``delta.role``, one per token with ``delta.content``, one with
``finish_reason`` (``length``, or ``stop`` for 0 tokens), a ``usage`` event when
``stream_options.include_usage`` asks for it, then ``data: [DONE]``; completions the same
with ``text_completion`` objects and ``text``. Read from the body: ``max_tokens`` (or
``max_completion_tokens``; default 200) and ``bench_rate``.

Run: ``python bench/upstream.py --port P``. The only output is one line ``ready PORT`` on stdout
once it listens (``--port 0`` picks a free port and reports it there). ``--self-test`` serves
on a free port in-process, checks the frames of every kind of answer and exits (0: all good).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import resource
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

DEFAULT_TOKENS = 200
DEFAULT_RATE = 50.0
MAX_TOKENS = 5_000_000
MAX_RATE = 100_000.0
MAX_BODY = 8 * 1024 * 1024
MAX_HEAD = 64 * 1024
BATCH_LINES = 256  # token lines per write() for the fast model
TOKEN_TEXT = "tok "
MODIFIED_AT = "2026-01-01T00:00:00Z"
MODELS = {
    "fast:latest": {"digest": "f" * 64, "size": 1_000_000_000},
    "slow:latest": {"digest": "5" * 64, "size": 1_000_000_001},
}
OPENAI_MODELS = ("fast", "slow")  # ids as OpenAI servers give them: no tag
OPENAI_PATHS = {"/v1/chat/completions": "openai-chat", "/v1/completions": "openai-completion"}
DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "bench",
    "families": ["bench"],
    "parameter_size": "1B",
    "quantization_level": "Q4_0",
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


class BadRequest(Exception):
    """A request the parser refuses; answered with ``status`` then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunk(payload: bytes) -> bytes:
    """One chunk of the chunked transfer encoding."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _response(
    status: int, body: bytes, content_type: bytes = b"application/json", keep_alive: bool = True
) -> bytes:
    """A complete response with a Content-Length."""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status,
        REASONS.get(status, "Error").encode(),
        content_type,
        len(body),
        b"" if keep_alive else b"Connection: close\r\n",
    )
    return head + body


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"
DONE_EVENT = b"data: [DONE]\n\n"


def _event(obj: Any) -> bytes:
    """One server-sent event as one chunk of the chunked transfer encoding."""
    return _chunk(b"data: " + _json(obj) + b"\n\n")


def openai_error(status: int, message: str, kind: str) -> bytes:
    """The OpenAI error shape."""
    return _json({"error": {"message": message, "type": kind, "param": None, "code": status}})


def normalize(name: str) -> str:
    """Ollama's rule: a model name without a tag means ``:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


class Lines:
    """The prebuilt bytes of one (endpoint, model name) stream.

    ``endpoint``: ``chat`` or ``generate`` (Ollama's NDJSON), ``openai-chat`` or
    ``openai-completion`` (server-sent events; ``usage``: end with a usage event).
    """

    def __init__(self, endpoint: str, model: str, usage: bool = False) -> None:
        self.endpoint = endpoint
        self.model = model
        self.usage = usage
        self.created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.created = int(time.time())
        self.head = STREAM_HEAD
        if endpoint == "chat":
            token = _chunk(
                _json(
                    {
                        "model": model,
                        "created_at": self.created_at,
                        "message": {"role": "assistant", "content": TOKEN_TEXT},
                        "done": False,
                    }
                )
                + b"\n"
            )
        elif endpoint == "generate":
            token = _chunk(
                _json(
                    {
                        "model": model,
                        "created_at": self.created_at,
                        "response": TOKEN_TEXT,
                        "done": False,
                    }
                )
                + b"\n"
            )
        else:
            first = self.openai_chunk({"role": "assistant", "content": ""}, None)
            self.head = SSE_HEAD + (_event(first) if endpoint == "openai-chat" else b"")
            token = _event(self.openai_chunk({"content": TOKEN_TEXT}, None))
        self.token_chunk = token
        self.batch = self.token_chunk * BATCH_LINES

    def openai_chunk(self, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        """A ``chat.completion.chunk`` with ``delta`` (or a ``text_completion`` with its text)."""
        if self.endpoint == "openai-chat":
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            kind, prefix = "chat.completion.chunk", "chatcmpl"
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None}
            choice["finish_reason"] = reason
            kind, prefix = "text_completion", "cmpl"
        return {
            "id": f"{prefix}-bench",
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def final(self, count: int, started: float) -> dict[str, Any]:
        """The closing ``done: true`` object with Ollama's counters (durations in ns)."""
        total = max(1, int((time.monotonic() - started) * 1e9))
        obj: dict[str, Any] = {"model": self.model, "created_at": self.created_at}
        if self.endpoint == "chat":
            obj["message"] = {"role": "assistant", "content": ""}
        else:
            obj["response"] = ""
        obj.update(
            done=True,
            done_reason="length" if count else "stop",
            total_duration=total,
            load_duration=1000,
            prompt_eval_count=1,
            prompt_eval_duration=1000,
            eval_count=count,
            eval_duration=total,
        )
        return obj

    def final_chunk(self, count: int, started: float) -> bytes:
        """What ends the stream: Ollama's ``done`` line, or the OpenAI API's last events."""
        if self.endpoint in ("chat", "generate"):
            return _chunk(_json(self.final(count, started)) + b"\n") + LAST_CHUNK
        end = _event(self.openai_chunk({}, "length" if count else "stop"))
        if self.usage:
            usage = {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}
            end += _event({**self.openai_chunk({}, None), "choices": [], "usage": usage})
        return end + _chunk(DONE_EVENT) + LAST_CHUNK


class Upstream:
    """The server: parses requests and answers them."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, str], Lines] = {}
        tags = [
            {
                "name": name,
                "model": name,
                "modified_at": MODIFIED_AT,
                "size": meta["size"],
                "digest": meta["digest"],
                "details": DETAILS,
            }
            for name, meta in MODELS.items()
        ]
        self.tags_body = _json({"models": tags})
        self.openai_models_body = _json(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "bench"}
                    for name in OPENAI_MODELS
                ],
            }
        )
        self.show_body = _json(
            {
                "license": "",
                "modelfile": "",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": DETAILS,
                "model_info": {"general.architecture": "bench"},
                "capabilities": ["completion"],
                "modified_at": MODIFIED_AT,
            }
        )

    def lines(self, endpoint: str, model: str, usage: bool = False) -> Lines:
        """The prebuilt lines for this stream (built once, then reused)."""
        key = (endpoint, model, usage)
        found = self._lines.get(key)
        if found is None:
            if len(self._lines) > 64:
                self._lines.clear()
            found = self._lines[key] = Lines(endpoint, model, usage)
        return found

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests one after the other while keep-alive holds."""
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequest as error:
                    body = _json({"error": str(error)})
                    writer.write(_response(error.status, body, keep_alive=False))
                    await writer.drain()
                    return
                if request is None:
                    return
                method, path, keep_alive, body = request
                await self.answer(writer, method, path, body, keep_alive)
                if not keep_alive:
                    await writer.drain()
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def answer(
        self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes, keep_alive: bool
    ) -> None:
        """Route one request and write its answer."""
        path = path.split("?", 1)[0]

        def reply(status: int, payload: bytes, kind: bytes = b"application/json") -> None:
            writer.write(_response(status, payload, kind, keep_alive))

        if path.startswith("/v1/"):
            await self.answer_openai(writer, method, path, body, keep_alive)
            return
        if path in ("/", "/api/version", "/api/tags") and method in ("GET", "HEAD"):
            if path == "/":
                reply(200, b"Ollama is running", b"text/plain; charset=utf-8")
            elif path == "/api/version":
                reply(200, b'{"version":"0.0.0-bench"}')
            else:
                reply(200, self.tags_body)
            return
        if path not in ("/api/show", "/api/chat", "/api/generate"):
            reply(404, b'{"error":"not found"}')
            return
        if method != "POST":
            reply(405, b'{"error":"method not allowed"}')
            return
        try:
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            reply(400, b'{"error":"invalid JSON body"}')
            return
        requested = data.get("model") or data.get("name") or ""
        name = normalize(requested) if isinstance(requested, str) and requested else ""
        if name not in MODELS:
            reply(404, _json({"error": f'model "{requested}" not found, try pulling it first'}))
            return
        if path == "/api/show":
            reply(200, self.show_body)
            return
        options = data.get("options") if isinstance(data.get("options"), dict) else {}
        count = _bounded_int(options.get("num_predict"), DEFAULT_TOKENS, 0, MAX_TOKENS)
        rate = _bounded_float(options.get("bench_rate"), DEFAULT_RATE, 0.001, MAX_RATE)
        lines = self.lines("chat" if path == "/api/chat" else "generate", requested)
        if data.get("stream", True) is False:
            reply(200, self.whole(lines, count))
            return
        await stream(writer, lines, count, rate, fast=name == "fast:latest")

    async def answer_openai(
        self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes, keep_alive: bool
    ) -> None:
        """The OpenAI API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``."""

        def reply(status: int, payload: bytes) -> None:
            writer.write(_response(status, payload, b"application/json", keep_alive))

        if path == "/v1/models" and method in ("GET", "HEAD"):
            reply(200, self.openai_models_body)
            return
        endpoint = OPENAI_PATHS.get(path)
        if endpoint is None:
            reply(404, openai_error(404, "not found", "NotFoundError"))
            return
        if method != "POST":
            reply(405, openai_error(405, "method not allowed", "BadRequestError"))
            return
        try:
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            reply(400, openai_error(400, "invalid JSON body", "BadRequestError"))
            return
        model = data.get("model")
        if model not in OPENAI_MODELS:
            message = f"The model `{model}` does not exist."
            reply(404, openai_error(404, message, "NotFoundError"))
            return
        limit = data.get("max_tokens", data.get("max_completion_tokens"))
        count = _bounded_int(limit, DEFAULT_TOKENS, 0, MAX_TOKENS)
        rate = _bounded_float(data.get("bench_rate"), DEFAULT_RATE, 0.001, MAX_RATE)
        stream_options = data.get("stream_options")
        usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        lines = self.lines(endpoint, model, usage)
        if data.get("stream") is not True:  # the OpenAI API streams only when asked
            reply(200, self.whole_openai(lines, count))
            return
        await stream(writer, lines, count, rate, fast=model == "fast")

    @staticmethod
    def whole(lines: Lines, count: int) -> bytes:
        """The non-streamed answer (``"stream": false``)."""
        obj = lines.final(count, time.monotonic())
        if lines.endpoint == "chat":
            obj["message"]["content"] = TOKEN_TEXT * count
        else:
            obj["response"] = TOKEN_TEXT * count
        return _json(obj)

    @staticmethod
    def whole_openai(lines: Lines, count: int) -> bytes:
        """The non-streamed OpenAI answer: one ``chat.completion`` or ``text_completion``."""
        text = TOKEN_TEXT * count
        reason = "length" if count else "stop"
        obj = lines.openai_chunk({}, reason)
        if lines.endpoint == "openai-chat":
            obj["object"] = "chat.completion"
            obj["choices"] = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                }
            ]
        else:
            obj["choices"][0]["text"] = text
        obj["usage"] = {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}
        return _json(obj)


def _bounded_int(value: Any, default: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return int(min(max(value, low), high))


def _bounded_float(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(min(max(value, low), high))


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bool, bytes] | None:
    """Read one request: (method, path, keep_alive, body), or None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise BadRequest(400, "incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(400, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "bad request line")
    method, path, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise BadRequest(413, "body too large")
        body = await reader.readexactly(length) if length else b""
    return method, path, keep_alive, body


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Read a chunked request body."""
    parts: list[bytes] = []
    size_total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest(400, "bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        size_total += size
        if size_total > MAX_BODY:
            raise BadRequest(413, "body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def stream(
    writer: asyncio.StreamWriter, lines: Lines, count: int, rate: float, fast: bool
) -> None:
    """The streamed answer: its head, then ``fast``'s tokens or the paced ones of ``slow``."""
    writer.write(lines.head)
    if fast:
        await stream_fast(writer, lines, count)
    else:
        await stream_paced(writer, lines, count, rate)


async def stream_fast(writer: asyncio.StreamWriter, lines: Lines, count: int) -> None:
    """Write ``count`` token lines as fast as the reader takes them, then the final line."""
    started = time.monotonic()
    full, rest = divmod(count, BATCH_LINES)
    for _ in range(full):
        writer.write(lines.batch)
        await writer.drain()
    if rest:
        writer.write(lines.token_chunk * rest)
    writer.write(lines.final_chunk(count, started))
    await writer.drain()


async def stream_paced(writer: asyncio.StreamWriter, lines: Lines, count: int, rate: float) -> None:
    """Write ``count`` token lines at ``rate`` per second: token i is due at start + (i+1)/rate.

    Pacing uses one ``call_at`` callback per token, which is far cheaper than a coroutine
    sleeping per token. A token that is late (the loop was busy) is sent at once, so the
    schedule catches up instead of drifting.
    """
    loop = asyncio.get_running_loop()
    transport = writer.transport
    done = loop.create_future()
    started = loop.time()
    wall_started = time.monotonic()
    chunk = lines.token_chunk
    interval = 1.0 / rate
    state = [0]  # tokens sent so far

    def tick() -> None:
        if transport.is_closing():
            if not done.done():
                done.set_result(None)
            return
        sent = state[0]
        now = loop.time()
        due = min(count, int((now - started) / interval + 1e-9))  # tokens due by now
        n = max(1, due - sent)
        transport.write(chunk * n if n > 1 else chunk)
        sent += n
        state[0] = sent
        if sent >= count:
            transport.write(lines.final_chunk(count, wall_started))
            done.set_result(None)
        else:
            loop.call_at(started + (sent + 1) * interval, tick)

    if count == 0:
        transport.write(lines.final_chunk(0, wall_started))
        return
    loop.call_at(started + interval, tick)
    await done
    await writer.drain()


def raise_nofile_limit() -> None:
    """Allow as many sockets as the hard limit permits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(host: str, port: int) -> None:
    """Listen, report readiness, and serve until SIGTERM/SIGINT."""
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, host, port, backlog=4096, limit=MAX_HEAD)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(
            sig, lambda: stop.done() or stop.set_result(None)
        )
    actual = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"ready {actual}\n")
    sys.stdout.flush()
    async with server:
        await stop


def _fetch(port: int, method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
    """One request (http.client undoes the chunked encoding): (status, content type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else _json(body))
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def _events(raw: bytes) -> list[Any]:
    """The ``data:`` payloads of a server-sent event stream, JSON-decoded except ``[DONE]``."""
    blocks = raw.decode().split("\n\n")
    _expect(blocks[-1] == "", f"the stream does not end with a blank line: {raw[-80:]!r}")
    _expect(all(b.startswith("data: ") for b in blocks[:-1]), f"not all events are data: {raw!r}")
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks[:-1]]


def check_ollama(port: int, path: str, model: str, count: int) -> None:
    """An NDJSON stream: ``count`` token lines, then the ``done`` line with its counters."""
    body = {"model": model, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    body["options"] = {"num_predict": count, "bench_rate": 1000}
    status, kind, raw = _fetch(port, "POST", path, body)
    _expect(status == 200 and kind == "application/x-ndjson", f"{path}: {status} {kind}")
    *tokens, last = [json.loads(line) for line in raw.splitlines()]
    field = "message" if path == "/api/chat" else "response"
    _expect(len(tokens) == count, f"{path}: {len(tokens)} token lines, not {count}")
    _expect(all(t["done"] is False and field in t for t in tokens), f"{path}: token {tokens}")
    _expect(last["done"] is True and last["eval_count"] == count, f"{path}: last {last}")


def check_openai(port: int, path: str, model: str, count: int, usage: bool) -> None:
    """An SSE stream: the role event (chat), ``count`` tokens, the finish, usage, ``[DONE]``."""
    chat = path == "/v1/chat/completions"
    body: dict[str, Any] = {"model": model, "max_tokens": count, "stream": True}
    body["bench_rate"] = 1000
    body.update({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})
    if usage:
        body["stream_options"] = {"include_usage": True}
    status, kind, raw = _fetch(port, "POST", path, body)
    _expect(status == 200 and kind.startswith("text/event-stream"), f"{path}: {status} {kind}")
    events = _events(raw)
    _expect(events[-1] == "[DONE]", f"{path}: no [DONE] at the end: {events[-2:]}")
    events = events[:-1]
    if usage:
        *events, counted = events
        _expect(counted["choices"] == [], f"{path}: the usage event has choices: {counted}")
        _expect(counted["usage"]["completion_tokens"] == count, f"{path}: usage {counted}")
    kind = "chat.completion.chunk" if chat else "text_completion"
    _expect(all(e["object"] == kind and e["model"] == model for e in events), f"{path}: {events}")
    choices = [e["choices"][0] for e in events]
    if chat:
        first, *choices = choices
        _expect(first["delta"]["role"] == "assistant", f"{path}: first event {first}")
    *tokens, end = choices
    pieces = [c["delta"].get("content") if chat else c["text"] for c in tokens]
    _expect(pieces == [TOKEN_TEXT] * count, f"{path}: {len(pieces)} tokens, not {count}")
    _expect(all(c["finish_reason"] is None for c in tokens), f"{path}: an early finish_reason")
    reason = "length" if count else "stop"
    _expect(end["finish_reason"] == reason, f"{path}: finish_reason {end['finish_reason']}")


def check_openai_edges(port: int) -> None:
    """The model list, an unknown model's error shape, and a whole (unstreamed) answer."""
    status, _, raw = _fetch(port, "GET", "/v1/models")
    ids = [model["id"] for model in json.loads(raw)["data"]]
    _expect(status == 200 and ids == list(OPENAI_MODELS), f"/v1/models: {status} {raw!r}")
    body = {"model": "nope", "messages": [], "stream": True}
    status, _, raw = _fetch(port, "POST", "/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    _expect(status == 404 and {"message", "type", "code"} <= set(error), f"404: {raw!r}")
    body = {"model": "fast", "messages": [], "max_tokens": 3}
    status, _, raw = _fetch(port, "POST", "/v1/chat/completions", body)
    whole = json.loads(raw)
    content = whole["choices"][0]["message"]["content"]
    _expect(status == 200 and content == TOKEN_TEXT * 3, f"unstreamed answer: {raw!r}")


def self_checks(port: int) -> None:
    """Every kind of answer, from both models, with and without tokens."""
    for model, count in (("fast:latest", 300), ("slow", 3), ("fast", 0)):
        for path in ("/api/chat", "/api/generate"):
            check_ollama(port, path, model, count)
    for model, count in (("fast", 300), ("slow", 3), ("fast", 0)):
        for path in OPENAI_PATHS:
            for usage in (False, True):
                check_openai(port, path, model, count, usage)
    check_openai_edges(port)


async def self_test() -> None:
    """Serve on a free port in this process and run the checks against it."""
    server = await asyncio.start_server(Upstream().handle, "127.0.0.1", 0, limit=MAX_HEAD)
    async with server:
        await asyncio.to_thread(self_checks, server.sockets[0].getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--self-test", action="store_true", help="check the answers and exit")
    args = parser.parse_args(argv)
    if args.self_test:
        asyncio.run(self_test())
        sys.stdout.write("self-test ok\n")
        return
    raise_nofile_limit()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
