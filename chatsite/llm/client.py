"""HTTP client for one chat instance (an LLM server speaking the Ollama API)."""

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter

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

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0  # how long a finished answer's body may take to end before it is cut


def _error_text(response: requests.Response) -> str:
    """Read Ollama's `{"error": ...}` text from a failed response, for the log."""
    try:
        body = response.raw.read(4096, decode_content=True)
        message = orjson.loads(body).get("error")
        if isinstance(message, str) and message:
            return message
    except Exception:
        pass
    return "no error text"


class InstanceStream:
    """An open NDJSON answer; iterate for parsed lines, `close()` to stop the GPU.

    The answer is complete at its `done` line, whatever the instance does afterwards:
    iteration stops there, and `release()` later lets the connection go.
    """

    def __init__(self, response: requests.Response, deadline: float, max_line: int) -> None:
        self.response = response
        self.deadline = deadline
        self.max_line = max_line
        self.complete = False
        self.cancelled = False  # set from another thread or greenlet by `cancel()`
        self._chunks: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield parsed lines up to the one marked done; a body that ends first is a failure."""
        buffer = b""
        self._chunks = self.response.iter_content(chunk_size=None)
        try:
            for chunk in self._chunks:
                if self.cancelled:
                    raise InstanceError(STOPPED)
                if time.monotonic() > self.deadline:
                    raise InstanceError(TOO_SLOW)
                buffer = buffer + chunk if buffer else chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        data = self._parse(line)
                        self.complete = data.get("done") is True
                        yield data
                        if self.complete:
                            return
                if len(buffer) > self.max_line:
                    raise InstanceError(INVALID_ANSWER, detail="an oversized line")
        except requests.RequestException as error:
            if self.cancelled:
                raise InstanceError(STOPPED) from None
            raise InstanceError(CONNECTION_FAILED, detail=type(error).__name__) from None
        except Exception:
            if self.cancelled:  # closed under the reader's feet: http.client fails as it may
                raise InstanceError(STOPPED) from None
            raise
        if self.cancelled:
            raise InstanceError(STOPPED)  # a close from another greenlet can look like an end
        if buffer.strip():
            data = self._parse(buffer)
            self.complete = data.get("done") is True
            yield data
        if not self.complete:
            raise InstanceError(ENDED_EARLY)

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InstanceError(INVALID_ANSWER, detail="a line that is not JSON") from None
        if not isinstance(data, dict):
            raise InstanceError(INVALID_ANSWER, detail="a line that is not an object")
        if "error" in data:
            raise InstanceError(SERVER_ERROR, detail=data["error"])
        return data

    def cancel(self) -> None:
        """Make the reader stop at the next piece (a thread blocked in a read cannot be woken)."""
        self.cancelled = True

    def close(self) -> None:
        """Close the connection so the instance stops generating, unless the answer is done."""
        if not self.complete:
            self.response.close()

    def release(self, grace: float = SETTLE_SECONDS) -> None:
        """Let the connection go: back to the pool if the body ends within `grace`, else closed.

        Call it once the client has its answer: a quiet instance then costs nobody a wait.
        """
        if not (self.complete and self._read_rest(grace)):
            self.response.close()

    def _read_rest(self, grace: float) -> bool:
        """Read what follows the done line (normally just the body's end), briefly."""
        connection = self.response.raw.connection
        if connection is None or self._chunks is None:
            return connection is None  # None: already read to its end and pooled
        try:
            if connection.sock is not None:
                connection.sock.settimeout(grace)  # the pool sets its own on the next request
            deadline, extra = time.monotonic() + grace, 0
            for chunk in self._chunks:
                extra += len(chunk)
                if extra > self.max_line or time.monotonic() > deadline:
                    return False
        except Exception:  # timed out or broken: this connection cannot be reused
            return False
        return True


class OllamaClient:
    """One pooled session per instance, with connect/read timeouts and no redirects."""

    def __init__(
        self,
        base_url: str,
        connect_timeout: float = 3.0,
        read_timeout: float = 120.0,
        max_seconds: float = 900.0,
        max_line: int = 1024 * 1024,
        pool_size: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.max_seconds = max_seconds
        self.max_line = max_line
        self.session = requests.Session()
        self.session.trust_env = False  # never route the GPU traffic through a proxy by accident
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _request(self, method: str, path: str, timeout: Any, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=timeout, allow_redirects=False, **kwargs
            )
        except requests.RequestException as error:
            reason = TOO_SLOW if isinstance(error, requests.Timeout) else UNREACHABLE
            raise InstanceError(reason, retryable=True, detail=type(error).__name__) from None
        status = response.status_code
        if status != 200:
            detail = f"HTTP {status}: {_error_text(response)}"
            response.close()
            retryable = status >= 500 or status == 429
            raise InstanceError(
                reason_for_status(status), status=status, retryable=retryable, detail=detail
            )
        return response

    def get_json(self, method: str, path: str, body: dict | None = None) -> Any:
        """Make a short, non-streamed call (tags, show) and return its JSON, unchecked."""
        timeout = (self.timeout[0], min(self.timeout[1], 10.0))
        data = orjson.dumps(body) if body else None
        response = self._request(method, path, timeout, data=data, stream=True)
        try:
            content = response.raw.read(self.max_line * 8, decode_content=True)
            return orjson.loads(content)
        except (orjson.JSONDecodeError, requests.RequestException, OSError) as error:
            raise InstanceError(INVALID_ANSWER, retryable=True, detail=error) from None
        finally:
            response.close()

    def tags(self) -> Any:
        """Ask which models this instance serves (the catalog checks the answer's shape)."""
        return self.get_json("GET", "/api/tags")

    def running(self) -> list[dict[str, Any]]:
        """List the models this instance has loaded in memory (Ollama's /api/ps)."""
        data = self.get_json("GET", "/api/ps")
        models = data.get("models") if isinstance(data, dict) else None
        return models if isinstance(models, list) else []

    def show(self, model: str) -> Any:
        """Ask for one model's description, with its capabilities (checked by the catalog)."""
        return self.get_json("POST", "/api/show", {"model": model})

    def stream(self, path: str, payload: dict[str, Any]) -> InstanceStream:
        """Start a streamed call; errors before the first byte raise InstanceError."""
        body = orjson.dumps({**payload, "stream": True})
        headers = {"Content-Type": "application/json"}
        response = self._request(
            "POST", path, self.timeout, data=body, headers=headers, stream=True
        )
        return InstanceStream(response, time.monotonic() + self.max_seconds, self.max_line)
