"""HTTP client for one chat instance (an LLM server speaking the Ollama API)."""

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter

from .errors import InstanceError

log = logging.getLogger(__name__)


def _error_text(response: requests.Response) -> str:
    """Extract Ollama's `{"error": ...}` text from a failed response, bounded."""
    try:
        body = response.raw.read(4096, decode_content=True)
        message = orjson.loads(body).get("error")
        if isinstance(message, str) and message:
            return message[:500]
    except Exception:
        pass
    return f"chat server answered HTTP {response.status_code}"


class InstanceStream:
    """An open NDJSON stream; iterate for parsed lines, `close()` to stop the GPU."""

    def __init__(self, response: requests.Response, deadline: float, max_line: int) -> None:
        self.response = response
        self.deadline = deadline
        self.max_line = max_line
        self.cancelled = False  # set from another thread by `cancel()`

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield parsed lines up to the one marked done, then read the body to its end.

        A body read to its end lets the connection go back to the pool for the next
        request; only a stream abandoned part-way has its connection closed.
        """
        done = False
        buffer = b""
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                if self.cancelled:
                    raise InstanceError("stopped")
                if time.monotonic() > self.deadline:
                    raise InstanceError("chat server took too long")
                if done:
                    continue
                buffer = buffer + chunk if buffer else chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip() and not done:
                        data = self._parse(line)
                        done = data.get("done") is True
                        yield data
                if len(buffer) > self.max_line:
                    raise InstanceError("chat server sent an oversized line")
        except requests.RequestException as error:
            if self.cancelled:
                raise InstanceError("stopped") from None
            raise InstanceError(f"chat server connection failed: {type(error).__name__}") from None
        except Exception:
            if self.cancelled:  # closed under the reader's feet: http.client fails as it may
                raise InstanceError("stopped") from None
            raise
        if self.cancelled:
            raise InstanceError("stopped")  # a close from another greenlet can look like an end
        if buffer.strip() and not done:
            yield self._parse(buffer)

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InstanceError("chat server sent invalid JSON") from None
        if not isinstance(data, dict):
            raise InstanceError("chat server sent an unexpected line")
        if "error" in data:
            raise InstanceError(f"chat server error: {str(data['error'])[:500]}")
        return data

    def cancel(self) -> None:
        """Make the reading thread stop at the next piece (where greenlets cannot be killed)."""
        self.cancelled = True

    def close(self) -> None:
        """Close the connection, so the instance stops generating."""
        self.response.close()


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
            raise InstanceError(
                f"chat server unreachable: {type(error).__name__}", retryable=True
            ) from None
        if response.status_code != 200:
            text = _error_text(response)
            response.close()
            retryable = response.status_code >= 500 or response.status_code == 429
            raise InstanceError(text, status=response.status_code, retryable=retryable)
        return response

    def get_json(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        """Make a short, non-streamed call (tags, show) and return its JSON."""
        timeout = (self.timeout[0], min(self.timeout[1], 10.0))
        data = orjson.dumps(body) if body else None
        response = self._request(method, path, timeout, data=data, stream=True)
        try:
            content = response.raw.read(self.max_line * 8, decode_content=True)
            return orjson.loads(content)
        except (orjson.JSONDecodeError, requests.RequestException, OSError) as error:
            raise InstanceError(f"chat server sent a bad answer: {error}", retryable=True) from None
        finally:
            response.close()

    def tags(self) -> list[dict[str, Any]]:
        """List the models this instance serves."""
        models = self.get_json("GET", "/api/tags").get("models")
        return models if isinstance(models, list) else []

    def running(self) -> list[dict[str, Any]]:
        """List the models this instance has loaded in memory (Ollama's /api/ps)."""
        data = self.get_json("GET", "/api/ps")
        models = data.get("models") if isinstance(data, dict) else None
        return models if isinstance(models, list) else []

    def show(self, model: str) -> dict[str, Any]:
        """Describe one model, including its capabilities."""
        return self.get_json("POST", "/api/show", {"model": model})

    def stream(self, path: str, payload: dict[str, Any]) -> InstanceStream:
        """Start a streamed call; errors before the first byte raise InstanceError."""
        body = orjson.dumps({**payload, "stream": True})
        headers = {"Content-Type": "application/json"}
        response = self._request(
            "POST", path, self.timeout, data=body, headers=headers, stream=True
        )
        return InstanceStream(response, time.monotonic() + self.max_seconds, self.max_line)
