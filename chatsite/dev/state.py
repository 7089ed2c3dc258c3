"""The dev instance's shared state: counters, recent requests, loaded models, failures to inject
and misbehaviour to show, the same whichever protocol a request came in on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

KEEP_ALIVE = 300.0  # seconds a model stays "loaded" (/api/ps) after its last use, as in Ollama


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
