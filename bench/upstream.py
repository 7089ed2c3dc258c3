"""A fast Ollama-protocol upstream for the benchmark (stdlib asyncio only).

It must never be the bottleneck, so it does as little work per token as possible:

* a minimal HTTP/1.1 parser on ``asyncio.start_server`` (keep-alive, Content-Length or
  chunked request bodies);
* every streamed NDJSON line is built once per (endpoint, model name) and then written as a
  ready-made chunk of the chunked transfer encoding;
* ``fast`` writes its N token lines in large batches (honouring back-pressure);
* ``slow`` paces its tokens with plain ``loop.call_at`` callbacks (no coroutine per token):
  token ``i`` (0-based) is due at ``start + (i + 1) / rate``, so N tokens take N / rate seconds.

Endpoints: ``GET /api/tags``, ``POST /api/show``, ``POST /api/chat``, ``POST /api/generate``,
``GET /api/version``, ``GET /`` (Ollama's "Ollama is running"). Options read from the request:
``options.num_predict`` (tokens, default 200) and ``options.bench_rate`` (tokens/s of ``slow``,
default 50).

Run: ``python bench/upstream.py --port P``. The only output is one line ``ready PORT`` on stdout
once it listens (``--port 0`` picks a free port and reports it there).
"""

from __future__ import annotations

import argparse
import asyncio
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
LAST_CHUNK = b"0\r\n\r\n"


def normalize(name: str) -> str:
    """Ollama's rule: a model name without a tag means ``:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


class Lines:
    """The prebuilt bytes of one (endpoint, model name) stream."""

    def __init__(self, endpoint: str, model: str) -> None:
        self.endpoint = endpoint
        self.model = model
        self.created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        if endpoint == "chat":
            token = {
                "model": model,
                "created_at": self.created_at,
                "message": {"role": "assistant", "content": TOKEN_TEXT},
                "done": False,
            }
        else:
            token = {
                "model": model,
                "created_at": self.created_at,
                "response": TOKEN_TEXT,
                "done": False,
            }
        self.token_chunk = _chunk(_json(token) + b"\n")
        self.batch = self.token_chunk * BATCH_LINES

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
        return _chunk(_json(self.final(count, started)) + b"\n") + LAST_CHUNK


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

    def lines(self, endpoint: str, model: str) -> Lines:
        """The prebuilt lines for this stream (built once, then reused)."""
        key = (endpoint, model)
        found = self._lines.get(key)
        if found is None:
            if len(self._lines) > 64:
                self._lines.clear()
            found = self._lines[key] = Lines(endpoint, model)
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
        writer.write(STREAM_HEAD)
        if name == "fast:latest":
            await stream_fast(writer, lines, count)
        else:
            await stream_paced(writer, lines, count, rate)

    @staticmethod
    def whole(lines: Lines, count: int) -> bytes:
        """The non-streamed answer (``"stream": false``)."""
        obj = lines.final(count, time.monotonic())
        if lines.endpoint == "chat":
            obj["message"]["content"] = TOKEN_TEXT * count
        else:
            obj["response"] = TOKEN_TEXT * count
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
