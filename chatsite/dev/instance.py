"""Development chat instance: a tiny Ollama-compatible HTTP server with deterministic demo models.

Front-end developers get a back end without GPUs (``make run``), and the test suite gets a real
HTTP peer whose answers are predictable and whose failures (errors, crashes, slow streams,
client disconnects) can be provoked on purpose. Stdlib only and independent of the rest of
chatsite, so it can never be broken by the code it is used to test.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import re
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

VERSION = "0.0.0-dev"
MAX_BODY = 8 * 1024 * 1024  # larger request bodies get 413
MAX_DRAIN = 64 * 1024 * 1024  # oversized bodies up to this are read and dropped so the 413 arrives
MAX_TOKEN_DELAY = 5.0
MAX_REPEAT = 10_000
# The knobs in ``options``, as a site in front of this instance must allow them to pass
# (chatsite's ALLOWED_OPTIONS: name -> [min, max]).
KNOBS = {"dev_token_delay": [0, MAX_TOKEN_DELAY], "dev_repeat": [0, MAX_REPEAT]}
MODIFIED_AT = "2026-01-01T00:00:00Z"
KEEP_ALIVE = 300.0  # seconds a model stays "loaded" (/api/ps) after its last use, as in Ollama
REGISTRY = "registry.ollama.ai/library/"
FAILABLE = frozenset({"/api/chat", "/api/generate", "/api/show", "/api/tags"})
TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")  # whitespace stays attached: "".join(pieces) == text
# `call NAME {args}`; NAME may be a JSON string, to test names no real tool has.
CALL_RE = re.compile(r'\bcall\s+("(?:[^"\\]|\\.)*"|[A-Za-z_][\w.-]*)\s*')
SAY_RE = re.compile(r'\bsay "([^"]*)"')  # what tooler says before its tool calls
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
THINK_LEVELS = ("low", "medium", "high")
_BAD_JSON = object()  # marks a request body that is not JSON at all


class DevHttpError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status, like Ollama does."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class DemoModel:
    """A canned model: its answers are computed from the input, never sampled."""

    name: str
    family: str
    capabilities: tuple[str, ...]
    token_delay: float = 0.0

    def details(self) -> dict[str, Any]:
        return {
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": "1B",
            "quantization_level": "Q4_0",
        }

    def tag(self) -> dict[str, Any]:
        """The model's /api/tags entry; size and digest are derived from the name so are stable."""
        digest = hashlib.sha256(self.name.encode()).hexdigest()
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": MODIFIED_AT,
            "size": 600_000_000 + int(digest[:6], 16),
            "digest": digest,
            "details": self.details(),
        }


MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel("echo:latest", "echo", ("completion",)),
        DemoModel("coder:latest", "coder", ("completion", "insert")),
        DemoModel("tooler:latest", "tooler", ("completion", "tools")),
        DemoModel("slow:latest", "echo", ("completion",), token_delay=0.05),
        DemoModel("broken:latest", "echo", ("completion",)),
        DemoModel("thinker:latest", "thinker", ("completion", "thinking")),
    )
}


def canonical_name(name: str) -> str:
    """Ollama treats a name without a tag as ``:latest``; do the same so lookups agree."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Find every ``call NAME {json}``; the JSON is decoded properly so nested braces work."""
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while match := CALL_RE.search(text, pos):
        args: dict[str, Any] = {}
        pos = match.end()
        if text.startswith("{", pos):
            with suppress(json.JSONDecodeError):
                args, pos = decoder.raw_decode(text, pos)
        name = match.group(1)
        if name.startswith('"'):
            with suppress(json.JSONDecodeError):
                name = json.loads(name)
        else:
            name = name.rstrip(".-")
        calls.append({"function": {"name": name, "arguments": args}})
    return calls


def chat_reply(
    model: DemoModel, messages: list[dict[str, Any]], tools_offered: bool
) -> tuple[str, list[dict[str, Any]]]:
    """Return (text, tool_calls) for a chat, deterministically, so tests can assert exact output."""

    def text(msg: dict[str, Any]) -> str:
        return msg.get("content") if isinstance(msg.get("content"), str) else ""

    users = [m for m in messages if m.get("role") == "user"]
    last_user = text(users[-1]) if users else ""
    if "tools" in model.capabilities:
        trailing: list[dict[str, Any]] = []
        for msg in reversed(messages):
            if msg.get("role") != "tool":
                break
            trailing.insert(0, msg)
        if trailing:
            return "; ".join(
                f"Tool {m.get('tool_name') or m.get('name') or '?'} said: {text(m)}"
                for m in trailing
            ), []
        calls = parse_tool_calls(last_user) if tools_offered else []
        if calls:
            said = SAY_RE.search(last_user)
            return said.group(1) if said else "", calls
    system = messages[0] if messages and messages[0].get("role") == "system" else None
    prefix = f"[{text(system)}] " if system is not None else ""
    return f"{prefix}You said: {last_user}", []


def thinking_for(messages: list[dict[str, Any]]) -> str:
    """What ``thinker`` thinks before it answers: about the last user message."""
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    return f"The user wrote {users[-1]['content'] if users else ''!r}; I will echo it. "


def generate_reply(model: DemoModel, prompt: str, suffix: str, system: str) -> str:
    """Return the /api/generate answer: coder continues or fills in, the others echo."""
    if "insert" in model.capabilities:
        if suffix:
            return f"<fill between {prompt[-20:]!r} and {suffix[:20]!r}>"
        return f"continuing: {prompt}"
    return f"[{system}] {prompt}" if system else prompt


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))  # never 0: clients divide by durations


class DevState:
    """Counters and recent request records shared by the handler threads (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: deque[dict[str, Any]] = deque(maxlen=100)
        self._counts = {
            "requests": 0,
            "active_streams": 0,
            "completed_streams": 0,
            "disconnected_streams": 0,
        }
        self._fail_status, self._fail_count, self._fail_error = 0, 0, ""
        self._misbehaviour: dict[str, Any] = {}
        self._loaded: dict[str, float] = {}  # model name -> when it unloads (monotonic)

    def use(self, model: str, keep_alive: float = KEEP_ALIVE) -> None:
        """Mark a model loaded, as a request for it makes Ollama load it."""
        with self._lock:
            self._loaded[model] = time.monotonic() + keep_alive

    def loaded(self) -> dict[str, float]:
        """The models still loaded and the seconds each has left, most recently used first."""
        now = time.monotonic()
        with self._lock:
            live = {name: until for name, until in self._loaded.items() if until > now}
            self._loaded = live
        return {name: live[name] - now for name in sorted(live, key=live.__getitem__, reverse=True)}

    def bump(self, counter: str, delta: int = 1) -> None:
        with self._lock:
            self._counts[counter] += delta

    def record(self, path: str, body: Any) -> None:
        with self._lock:
            self._counts["requests"] += 1
            self._records.append({"path": path, "body": body})

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        """Forget counters, records and pending failures (not live streams, which still end)."""
        with self._lock:
            self._counts.update(requests=0, completed_streams=0, disconnected_streams=0)
            self._records.clear()
            self._fail_status, self._fail_count, self._fail_error = 0, 0, ""
            self._misbehaviour = {}
            self._loaded.clear()

    def fail_next(self, status: int, count: int, error: str = "injected failure") -> None:
        with self._lock:
            self._fail_status, self._fail_count = status, max(0, count)
            self._fail_error = error

    def take_failure(self) -> tuple[int, str]:
        """Return the injected (status, error text) for this call, consuming one, or (0, "")."""
        with self._lock:
            if self._fail_count <= 0:
                return 0, ""
            self._fail_count -= 1
            return self._fail_status, self._fail_error

    def misbehave(self, how: dict[str, Any]) -> None:
        """Replace the misbehaviour (see ``/dev/misbehave``); ``reset()`` ends it."""
        with self._lock:
            self._misbehaviour = dict(how)

    def misbehaviour(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._misbehaviour)


def _options(body: dict[str, Any]) -> tuple[float | None, int]:
    """Read the dev_* knobs from ``options``; other options are accepted and ignored."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise DevHttpError(400, "options must be an object")
    delay = opts.get("dev_token_delay")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise DevHttpError(400, "options.dev_token_delay must be a number")
        delay = min(float(delay), MAX_TOKEN_DELAY) if delay >= 0 else 0.0  # NaN -> 0
    repeat = opts.get("dev_repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int):
        raise DevHttpError(400, "options.dev_repeat must be an integer")
    return delay, min(max(repeat, 0), MAX_REPEAT)


def _field(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise DevHttpError(400, f"{key} must be of type {kind.__name__}")
    return value


_ROUTES: dict[tuple[str, str], str] = {  # (method, path) -> api_<name>
    ("GET", "/"): "root",
    ("HEAD", "/"): "root",
    ("GET", "/api/version"): "version",
    ("GET", "/api/tags"): "tags",
    ("GET", "/api/ps"): "ps",
    ("POST", "/api/show"): "show",
    ("POST", "/api/chat"): "chat",
    ("POST", "/api/generate"): "generate",
    ("GET", "/dev/stats"): "dev_stats",
    ("GET", "/dev/requests"): "dev_requests",
    ("POST", "/dev/reset"): "dev_reset",
    ("POST", "/dev/fail"): "dev_fail",
    ("POST", "/dev/misbehave"): "dev_misbehave",
}
MISBEHAVIOURS = {"tags", "show", "error", "skip_done", "linger"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"chatsite-devinstance/{VERSION}"
    disable_nagle_algorithm = True  # one small write per token must leave at once
    server: DevServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_HEAD = do_PUT = do_DELETE = do_GET

    def _dispatch(self) -> None:
        path, state = urlsplit(self.path).path, self.server.state
        try:
            body = self._read_json()
        except DevHttpError as err:
            self.close_connection = True  # the body was not (fully) consumed
            if path.startswith("/api/"):
                state.record(path, None)
            return self._send_json(err.status, {"error": err.message})
        if path.startswith("/api/"):
            state.record(path, None if body is _BAD_JSON else body)
        name = _ROUTES.get((self.command, path))
        if name is None:
            known = any(p == path for _, p in _ROUTES)
            return self._send_json(
                405 if known else 404, {"error": "method not allowed" if known else "not found"}
            )
        status, error = state.take_failure() if path in FAILABLE else (0, "")
        if status:
            log.info("injecting HTTP %d into %s", status, path)
            return self._send_json(status, {"error": error})
        try:
            if self.command == "POST" and body is _BAD_JSON:
                raise DevHttpError(400, "invalid JSON body")
            if self.command == "POST" and path.startswith("/api/") and not isinstance(body, dict):
                raise DevHttpError(
                    400,
                    "missing request body"
                    if body is None
                    else "request body must be a JSON object",
                )
            getattr(self, f"api_{name}")(None if body is _BAD_JSON else body)
        except DevHttpError as err:
            self._send_json(err.status, {"error": err.message})

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

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _stream(self, lines: Iterator[dict[str, Any]], linger: float = 0.0) -> None:
        """Write NDJSON with hand-made chunked encoding; stop at once if the client went away.

        ``linger`` keeps the body open that long after the last line, like a quiet server.
        """
        state = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        state.bump("active_streams")
        try:
            self.end_headers()
            for obj in lines:
                data = json.dumps(obj).encode() + b"\n"
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

    def _model(self, body: dict[str, Any]) -> DemoModel:
        name = _field(body, "model", str, "")
        if not name.strip():
            raise DevHttpError(400, "model is required")
        model = MODELS.get(canonical_name(name))
        if model is None:
            raise DevHttpError(404, f'model "{name}" not found, try pulling it first')
        self.server.state.use(model.name)
        return model

    def _answer(
        self,
        body: dict[str, Any],
        model: DemoModel,
        kind: str,
        text: str,
        tool_calls: list[dict[str, Any]],
        prompt_tokens: int,
        thinking: str = "",
    ) -> None:
        """Stream (or return whole) an answer; ``kind`` is "chat" or "generate"."""
        delay, repeat = _options(body)
        stream = _field(body, "stream", bool, True)
        if delay is None:
            delay = self.server.token_delay or model.token_delay
        pieces = TOKEN_RE.findall(text)  # repeated lazily: dev_repeat may be large
        thoughts = TOKEN_RE.findall(thinking)
        how = self.server.state.misbehaviour()
        started = time.monotonic()

        def line(piece: str, **extra: Any) -> dict[str, Any]:
            head = {"model": model.name, "created_at": _now()}
            if kind == "chat":
                return {**head, "message": {"role": "assistant", "content": piece, **extra}}
            return {**head, "response": piece}

        def lines() -> Iterator[dict[str, Any]]:
            todo = itertools.chain.from_iterable(itertools.repeat(pieces, repeat))
            if model.name == "broken:latest":
                todo = itertools.islice(itertools.chain(todo, ["tick "] * 3), 3)
            count = 0
            for thought in itertools.chain.from_iterable(itertools.repeat(thoughts, repeat)):
                count += 1
                if delay:
                    time.sleep(delay)
                yield {**line("", thinking=thought), "done": False}
            for piece in todo:
                count += 1
                if delay:
                    time.sleep(delay)
                yield {**line(piece), "done": False}
            if model.name == "broken:latest":
                yield {"error": how.get("error", "model runner crashed")}
                return
            if tool_calls:
                yield {**line("", tool_calls=tool_calls), "done": False}
            if how.get("skip_done"):
                return
            took = time.monotonic() - started
            yield {
                **line(""),
                "done": True,
                "done_reason": "stop",
                "total_duration": _ns(took),
                "load_duration": _ns(0),
                "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": _ns(0),
                "eval_count": count + len(tool_calls),
                "eval_duration": _ns(took),
            }

        if stream:
            return self._stream(lines(), float(how.get("linger", 0)))
        *parts, final = list(lines())
        if "error" in final:
            raise DevHttpError(500, final["error"])
        if kind == "generate":
            final["response"] = "".join(p["response"] for p in parts)
        else:
            final["message"]["content"] = "".join(p["message"]["content"] for p in parts)
            if thoughts:
                final["message"]["thinking"] = "".join(
                    p["message"].get("thinking", "") for p in parts
                )
            if tool_calls:
                final["message"]["tool_calls"] = tool_calls
        self._send_json(200, final)

    # --- endpoints: each gets the parsed JSON body (None for GET) ---

    def api_root(self, _body: Any) -> None:
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def api_version(self, _body: Any) -> None:
        self._send_json(200, {"version": VERSION})

    def api_tags(self, _body: Any) -> None:
        how = self.server.state.misbehaviour()
        if "tags" in how:
            return self._send_json(200, how["tags"])
        self._send_json(200, {"models": [m.tag() for m in MODELS.values()]})

    def api_ps(self, _body: Any) -> None:
        """The models used within KEEP_ALIVE seconds, as Ollama lists what it has in memory."""
        models = []
        for name, left in self.server.state.loaded().items():
            tag, until = MODELS[name].tag(), datetime.now(UTC) + timedelta(seconds=left)
            expires = until.isoformat(timespec="seconds").replace("+00:00", "Z")
            models.append({**tag, "expires_at": expires, "size_vram": tag["size"]})
        self._send_json(200, {"models": models})

    def api_show(self, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DevHttpError(400, "model is required")
        model = MODELS.get(canonical_name(name))
        if model is None:
            raise DevHttpError(404, f"model '{name}' not found")
        how = self.server.state.misbehaviour()
        if "show" in how:
            return self._send_json(200, how["show"])
        self._send_json(
            200,
            {
                "details": model.details(),
                "capabilities": list(model.capabilities),
                "model_info": {},
                "modified_at": MODIFIED_AT,
            },
        )

    def api_chat(self, body: dict[str, Any]) -> None:
        model = self._model(body)
        messages = _field(body, "messages", list, [])
        if not all(isinstance(m, dict) for m in messages):
            raise DevHttpError(400, "messages must be a list of objects")
        tools = _field(body, "tools", list, [])
        if tools and "tools" not in model.capabilities:
            raise DevHttpError(400, f"{REGISTRY}{model.name} does not support tools")
        think = body.get("think")
        if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
            raise DevHttpError(400, "think must be a boolean or one of low, medium, high")
        thinks = "thinking" in model.capabilities
        if think and not thinks:
            raise DevHttpError(400, f'"{REGISTRY}{model.name}" does not support thinking')
        text, calls = chat_reply(model, messages, bool(tools))
        thinking = thinking_for(messages) if thinks and think is not False else ""
        prompt = " ".join(m["content"] for m in messages if isinstance(m.get("content"), str))
        tokens = len(TOKEN_RE.findall(prompt))
        self._answer(body, model, "chat", text, calls, tokens, thinking)

    def api_generate(self, body: dict[str, Any]) -> None:
        model = self._model(body)
        prompt, suffix, system = (_field(body, k, str, "") for k in ("prompt", "suffix", "system"))
        if suffix and "insert" not in model.capabilities:
            raise DevHttpError(400, f"{REGISTRY}{model.name} does not support insert")
        text = generate_reply(model, prompt, suffix, system)
        tokens = len(TOKEN_RE.findall(f"{system} {prompt} {suffix}"))
        self._answer(body, model, "generate", text, [], tokens)

    def api_dev_stats(self, _body: Any) -> None:
        self._send_json(200, self.server.state.stats())

    def api_dev_requests(self, _body: Any) -> None:
        self._send_json(200, {"requests": self.server.state.records()})

    def api_dev_reset(self, _body: Any) -> None:
        self.server.state.reset()
        self._send_json(200, {"status": "ok"})

    def api_dev_fail(self, body: Any) -> None:
        body = body if isinstance(body, dict) else {}
        status, count = _field(body, "status", int, 503), _field(body, "count", int, 1)
        error = _field(body, "error", str, "injected failure")
        if not 400 <= status <= 599:
            raise DevHttpError(400, "status must be between 400 and 599")
        self.server.state.fail_next(status, count, error)
        self._send_json(200, {"status": status, "count": count, "error": error})

    def api_dev_misbehave(self, body: Any) -> None:
        how = body if isinstance(body, dict) else {}
        unknown = set(how) - MISBEHAVIOURS
        if unknown:
            raise DevHttpError(400, f"unknown misbehaviour {sorted(unknown)}")
        _field(how, "error", str, "")
        _field(how, "skip_done", bool, False)
        linger = how.get("linger", 0)
        if isinstance(linger, bool) or not isinstance(linger, int | float) or not linger >= 0:
            raise DevHttpError(400, "linger must be a number of seconds")
        self.server.state.misbehave(how)
        self._send_json(200, how)


class DevServer(ThreadingHTTPServer):
    """The HTTP server; holds the shared state and the default per-token delay."""

    daemon_threads = True  # idle keep-alive connections must not block shutdown

    def __init__(self, address: tuple[str, int], token_delay: float = 0.0) -> None:
        super().__init__(address, _Handler)
        self.token_delay = max(0.0, token_delay)
        self.state = DevState()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], DISCONNECTS):
            log.info("client %s went away before the answer was sent", client_address)
        else:
            log.exception("error while handling a request from %s", client_address)


class DevInstance:
    """A DevServer on a background thread: what the tests and ``make run`` use."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token_delay: float = 0.0) -> None:
        self.server = DevServer((host, port), token_delay)  # bound now, so url works at once
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DevInstance:
        """Serve on a daemon thread so a forgotten stop() never hangs the interpreter."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.server.serve_forever,
                daemon=True,
                kwargs={"poll_interval": 0.05},
                name="devinstance",
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (streams in flight end on their own)."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None
        self.server.server_close()

    def stats(self) -> dict[str, int]:
        return self.server.state.stats()

    def requests(self) -> list[dict[str, Any]]:
        return self.server.state.records()

    def reset(self) -> None:
        self.server.state.reset()

    def load(self, model: str) -> None:
        """Mark a model loaded, as if a request had just used it."""
        self.server.state.use(canonical_name(model))

    def loaded(self) -> list[str]:
        """The models /api/ps lists now."""
        return list(self.server.state.loaded())

    def fail_next(self, status: int, count: int = 1, error: str = "injected failure") -> None:
        """Make the next ``count`` API calls answer ``status`` (to test retries/cool-downs)."""
        self.server.state.fail_next(status, count, error)

    def misbehave(self, **how: Any) -> None:
        """Answer nonsense or end streams badly, as ``POST /dev/misbehave`` does."""
        self.server.state.misbehave(how)

    def __enter__(self) -> DevInstance:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the dev instance in the foreground (``make run``) until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m chatsite.dev.instance",
        description="Ollama-compatible server with demo models.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds to sleep before each token, for every model",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    instance = DevInstance(args.host, args.port, args.token_delay).start()
    print(f"chatsite dev instance on {instance.url} (models: {', '.join(MODELS)})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        instance.stop()


if __name__ == "__main__":
    main()
