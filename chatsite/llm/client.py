"""The transport to one chat instance: pooled session, read watchdog, and framing.

What the lines mean is the wire protocol's business (`chatsite.llm.protocols`): the
transport splits a streamed body into lines (NDJSON, or server-sent events' `data:`
lines), hands each to the protocol's decoder, and stops at the line the decoder says ends
the answer.
"""

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import requests
import urllib3
from gevent import get_hub
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from .. import defaults
from ..greenlets import gevent_active
from .errors import (
    CONNECTION_FAILED,
    ENDED_EARLY,
    INVALID_ANSWER,
    SERVER_ERROR,
    STOPPED,
    TOO_SLOW,
    UNREACHABLE,
    InstanceError,
    reason_for_status,
)
from .gevent_stream import BODY_ERRORS as GEVENT_BODY_ERRORS
from .gevent_stream import GeventStreamPool, GeventStreamResponse
from .protocols.base import Decoder, error_text
from .settle import body_ends_within

log = logging.getLogger(__name__)

# What a failed read of a streamed body raises, whichever way it was sent.
BODY_ERRORS = (urllib3.exceptions.HTTPError, *GEVENT_BODY_ERRORS)
SETTLE_SECONDS = 1.0  # how long a finished answer's body may take to end before it is cut


def read_object(line: bytes) -> dict[str, Any]:
    """Parse one line of a streamed body: a JSON object, else the answer is invalid."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise InstanceError(INVALID_ANSWER, detail="a line that is not JSON") from None
    if not isinstance(data, dict):
        raise InstanceError(INVALID_ANSWER, detail="a line that is not an object")
    return data


def objects(line: bytes, out: list) -> str | None:
    """The plain NDJSON reading: each line's object as it is, `{"done": true}` ends it."""
    data = read_object(line)
    if "error" in data:
        raise InstanceError(SERVER_ERROR, detail=data["error"])
    out.append(data)
    return "stop" if data.get("done") is True else None


class ReadWatchdog:
    """Ends a stream whose upstream sends nothing for `timeout` seconds, with ONE timer.

    Under gevent a socket with a timeout arms a timer for every read that waits, i.e. for
    every token of a slow stream; instead the stream's socket has no timeout and this timer
    wakes up once per `timeout`, checks how long the reader has been waiting, and either
    re-arms for what is left or shuts the socket down, which wakes the reader with an
    end-of-stream that the reader turns into an error. Only time spent waiting for the
    upstream counts: a reader blocked writing to a slow client is not waiting.
    """

    def __init__(self, timeout: float, expire: Callable[[], None]) -> None:
        self.timeout = timeout
        self.waiting_since: float | None = None  # set by the reader around each read
        self.fired = False
        self._expire = expire
        self._loop = get_hub().loop
        self._timer = None
        self._arm(timeout)

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.timer(max(delay, 0.001))
        self._timer.start(self._check)

    def _check(self) -> None:
        since = self.waiting_since
        idle = 0.0 if since is None else time.monotonic() - since
        if idle < self.timeout:
            self._arm(self.timeout - idle)
            return
        self.fired = True
        self._timer = None
        with contextlib.suppress(Exception):
            self._expire()

    def stop(self) -> None:
        """Disarm (idempotent); the stream has ended."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()


class InstanceStream:
    """An open streamed answer; iterate for what the decoder makes of its lines.

    The answer is complete at the line the decoder ends it with (its `end_reason`),
    whatever the instance sends afterwards: iteration stops there, and `release()` later
    lets the connection go. `sse`: the body is server-sent events, whose `data:` lines
    carry the answer (other lines and blank ones are skipped).
    """

    def __init__(
        self,
        response: "StreamResponse | GeventStreamResponse",
        deadline: float,
        max_line: int,
        decode: Decoder = objects,
        sse: bool = False,
    ) -> None:
        self.response = response
        self.deadline = deadline
        self.max_line = max_line
        self.decode = decode
        self.sse = sse
        self.end_reason: str | None = None
        self.complete = False
        self.cancelled = False  # set from another thread or greenlet by `cancel()`
        self.watchdog: ReadWatchdog | None = None

    def watch_reads(self, read_timeout: float) -> None:
        """Under gevent: one watchdog for the body's reads instead of a timer per read."""
        sock = self.response.socket()
        if sock is None:
            return
        sock.settimeout(None)  # the connection's next request sets it again
        self.watchdog = ReadWatchdog(read_timeout, lambda: sock.shutdown(socket.SHUT_RDWR))

    def __iter__(self) -> Iterator[Any]:
        """Yield decoded pieces up to the answer's end; a body that ends first is a failure."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Any]]:
        """Yield what the lines that each read of the body completed decode to, as one list.

        A slow upstream's read holds one line; one that is ahead of us (or a busy worker
        that is behind) gets many per read, and a relay can then answer them with one
        write. The last batch ends with the answer's last line; a body that ends first is
        a failure.
        """
        buffer = b""
        decode, sse = self.decode, self.sse
        watchdog = self.watchdog
        chunks = self.response.chunks()
        try:
            while True:
                if watchdog is not None:
                    watchdog.waiting_since = time.monotonic()
                chunk = next(chunks, None)
                if watchdog is not None:
                    watchdog.waiting_since = None
                if chunk is None:
                    break
                if self.cancelled:
                    raise InstanceError(STOPPED)
                if time.monotonic() > self.deadline:
                    raise InstanceError(TOO_SLOW)
                buffer = buffer + chunk if buffer else chunk
                *lines, buffer = buffer.split(b"\n")
                batch: list[Any] = []
                for line in lines:
                    if sse:
                        if not line.startswith(b"data:"):
                            continue  # blank, a comment, `event:` or `id:`
                        line = line[6:] if line.startswith(b"data: ") else line[5:]
                    if line.strip():
                        try:
                            end = decode(line, batch)
                        except InstanceError:
                            if batch:  # the lines before the bad one still go out
                                yield batch
                            raise
                        if end is not None:
                            self.end_reason, self.complete = end, True
                            yield batch
                            return
                if batch:
                    yield batch
                if len(buffer) > self.max_line:
                    raise InstanceError(INVALID_ANSWER, detail="an oversized line")
        except BODY_ERRORS as error:
            if self.cancelled:
                raise InstanceError(STOPPED) from None
            if watchdog is not None and watchdog.fired:
                raise InstanceError(CONNECTION_FAILED, detail="read timed out") from None
            raise InstanceError(CONNECTION_FAILED, detail=type(error).__name__) from None
        except Exception:
            if self.cancelled:  # closed under the reader's feet: http.client fails as it may
                raise InstanceError(STOPPED) from None
            raise
        finally:
            if watchdog is not None:
                watchdog.stop()
        if self.cancelled:
            raise InstanceError(STOPPED)  # a close from another greenlet can look like an end
        if sse:  # the last line, unended: an event's data, or nothing to read
            data = buffer.startswith(b"data:")
            buffer = (buffer[6:] if buffer.startswith(b"data: ") else buffer[5:]) if data else b""
        if buffer.strip():
            batch = []
            end = decode(buffer, batch)
            self.end_reason, self.complete = end, end is not None
            yield batch
        if not self.complete:
            raise InstanceError(ENDED_EARLY)

    def cancel(self) -> None:
        """Make the reader stop at the next piece (a thread blocked in a read cannot be woken)."""
        self.cancelled = True

    def close(self) -> None:
        """Close the connection so the instance stops generating, unless the answer is done."""
        if self.watchdog is not None:
            self.watchdog.stop()
        if not self.complete:
            self.response.close()

    def release(self, grace: float = SETTLE_SECONDS) -> None:
        """Let the connection go: back to the pool if the body ends within `grace`, else closed.

        Call it once the client has its answer: a quiet instance then costs nobody a wait.
        """
        if not (self.complete and self.response.settle(grace, self.max_line)):
            self.response.close()


class StreamResponse:
    """A urllib3 response read as `GeventStreamResponse` is: what `InstanceStream` needs."""

    __slots__ = ("_chunks", "raw", "status_code")

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self._chunks: Iterator[bytes] | None = None

    def socket(self) -> socket.socket | None:
        """The connection, for a read watchdog that may shut it down."""
        return getattr(getattr(self.raw, "connection", None), "sock", None)

    def chunks(self) -> Iterator[bytes]:
        """The body as it comes: one chunk of the chunked encoding per read, decoded if the
        server compressed it (straight from urllib3, without requests' wrapper)."""
        self._chunks = self.raw.stream(None, decode_content=True)
        return self._chunks

    def read_body(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (an error's text, a short answer)."""
        return self.raw.read(limit, decode_content=True)

    def settle(self, grace: float, limit: int) -> bool:
        """Read what follows the answer's last line (normally just the body's end) for at
        most `grace` seconds and `limit` bytes; True if the connection went back to the pool."""
        connection = self.raw.connection
        if connection is None or self._chunks is None:
            return connection is None  # None: already read to its end and pooled
        return body_ends_within(connection.sock, self._chunks, grace, limit)

    def close(self) -> None:
        """Close the connection (as `requests.Response.close` does for an unread body)."""
        self.raw.close()
        self.raw.release_conn()


class InstanceClient:
    """One pooled session per instance, with connect/read timeouts and no redirects.

    `sse`: its streamed answers are server-sent events, else NDJSON. `api_key`: sent as
    `Authorization: Bearer`, and blotted out of any text the instance sends back (an
    error may quote it), so it reaches no log line and no client.
    """

    def __init__(
        self,
        base_url: str,
        connect_timeout: float = defaults.UPSTREAM_CONNECT_TIMEOUT,
        read_timeout: float = defaults.UPSTREAM_READ_TIMEOUT,
        max_seconds: float = defaults.UPSTREAM_MAX_SECONDS,
        max_line: int = defaults.UPSTREAM_MAX_LINE_BYTES,
        pool_size: int = 64,
        sse: bool = False,
        api_key: str | None = None,
        read_error: Callable[[bytes], str] = error_text,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.max_seconds = max_seconds
        self.max_line = max_line
        self.sse = sse
        self._api_key = api_key
        self._read_error = read_error
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.session = requests.Session()
        self.session.trust_env = False  # never route the GPU traffic through a proxy by accident
        self.adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)
        # The streamed POST's own way to the adapter's pool (see `_post_stream`).
        self._url_path = urllib3.util.parse_url(self.base_url).path or ""
        self._stream_timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._pool_key: tuple[dict[str, Any], dict[str, Any]] | None = None
        # Under gevent an http:// instance's streamed POSTs take geventhttpclient's pool
        # instead (see `gevent_stream`), made on first use by the worker that uses it.
        # A connection is taken only with a slot, and there are at most `pool_size` slots:
        # twice that, so that a connection on its way back never makes a request wait.
        url = urllib3.util.parse_url(self.base_url)
        self._gevent_target = (
            (url.host.strip("[]"), url.port or 80, url.netloc) if url.scheme == "http" else None
        )
        self._gevent_pool_size = 2 * pool_size
        self._gevent_pool: GeventStreamPool | None = None

    def __repr__(self) -> str:  # never the key
        return f"InstanceClient({self.base_url!r})"

    def _redacted(self, text: str) -> str:
        key = self._api_key
        return text.replace(key, "[api key]") if key and key in text else text

    def _succeeded(self, response: Any) -> Any:
        """The response if it is a 200, else InstanceError (the server's words as its detail).

        A 5xx or 429 may go better elsewhere; so may a 401 or 403: this instance refuses
        chatsite's key (the operator's error, never the client's).
        """
        status = response.status_code
        if status == 200:
            return response
        try:
            text = self._read_error(response.read_body(4096))
        except Exception:
            text = "no error text"
        finally:
            response.close()
        detail = f"HTTP {status}: {self._redacted(text)}"
        retryable = status >= 500 or status in (401, 403, 429)
        raise InstanceError(
            reason_for_status(status), status=status, retryable=retryable, detail=detail
        )

    def _request(self, method: str, path: str, timeout: Any, **kwargs: Any) -> StreamResponse:
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                timeout=timeout,
                allow_redirects=False,
                headers=self._headers,
                **kwargs,
            )
        except requests.RequestException as error:
            reason = TOO_SLOW if isinstance(error, requests.Timeout) else UNREACHABLE
            raise InstanceError(reason, retryable=True, detail=type(error).__name__) from None
        return self._succeeded(StreamResponse(response.raw))

    def _post_stream(self, path: str, body: bytes) -> "StreamResponse | GeventStreamResponse":
        """POST a JSON body and return the response once its head is in.

        Under gevent, to an http:// instance, through geventhttpclient (`gevent_stream`).
        Otherwise the request goes straight to urllib3's connection pool, the very pool (and TLS
        settings) the session's adapter uses for this instance: what requests adds around
        it (building a request and a `Response`, choosing the pool, merging the session's
        settings) does nothing for these calls and cost about a tenth of a stream's start.
        Errors are named as requests names them.
        """
        if self._gevent_target is not None and gevent_active():
            return self._succeeded(self._gevent_stream_pool().post(self._url_path + path, body))
        url = self.base_url + path
        headers = {**self._headers, "Content-Length": str(len(body))}
        try:
            if self._pool_key is None:
                request = requests.PreparedRequest()
                request.prepare(method="POST", url=url)
                self._pool_key = self.adapter.build_connection_pool_key_attributes(
                    request, verify=True
                )
            host, pool_kwargs = self._pool_key
            pool = self.adapter.poolmanager.connection_from_host(**host, pool_kwargs=pool_kwargs)
            raw = pool.urlopen(
                "POST",
                self._url_path + path,
                body=body,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=self.adapter.max_retries,
                timeout=self._stream_timeout,
            )
        except urllib3.exceptions.MaxRetryError as error:
            connect_timeout = isinstance(error.reason, urllib3.exceptions.ConnectTimeoutError)
            if connect_timeout and not isinstance(error.reason, NewConnectionError):
                raise InstanceError(TOO_SLOW, retryable=True, detail="ConnectTimeout") from None
            tls = isinstance(error.reason, urllib3.exceptions.SSLError)
            name = "SSLError" if tls else "ConnectionError"
            raise InstanceError(UNREACHABLE, retryable=True, detail=name) from None
        except urllib3.exceptions.ReadTimeoutError:
            raise InstanceError(TOO_SLOW, retryable=True, detail="ReadTimeout") from None
        except (urllib3.exceptions.HTTPError, OSError, requests.RequestException) as error:
            raise InstanceError(UNREACHABLE, retryable=True, detail=type(error).__name__) from None
        return self._succeeded(StreamResponse(raw))

    def _gevent_stream_pool(self) -> GeventStreamPool:
        if self._gevent_pool is None:
            host, port, authority = self._gevent_target
            self._gevent_pool = GeventStreamPool(
                host,
                port,
                authority,
                self._headers,
                connect_timeout=self.timeout[0],
                read_timeout=self.timeout[1],
                size=self._gevent_pool_size,
            )
        return self._gevent_pool

    def get_json(self, method: str, path: str, body: dict | None = None) -> Any:
        """Make a short, non-streamed call (a model list) and return its JSON, unchecked."""
        timeout = (self.timeout[0], min(self.timeout[1], 10.0))
        data = orjson.dumps(body) if body else None
        response = self._request(method, path, timeout, data=data, stream=True)
        try:
            content = response.read_body(self.max_line * 8)
            return orjson.loads(content)
        except (orjson.JSONDecodeError, requests.RequestException, OSError) as error:
            raise InstanceError(INVALID_ANSWER, retryable=True, detail=error) from None
        finally:
            response.close()

    def stream(
        self, path: str, payload: dict[str, Any], decode: Decoder = objects
    ) -> InstanceStream:
        """Start a streamed call; errors before the first byte raise InstanceError."""
        response = self._post_stream(path, orjson.dumps({**payload, "stream": True}))
        stream = InstanceStream(
            response, time.monotonic() + self.max_seconds, self.max_line, decode, self.sse
        )
        if gevent_active():
            stream.watch_reads(self.timeout[1])
        return stream
