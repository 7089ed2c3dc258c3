"""Development chat instance: a tiny Ollama- and OpenAI-compatible server with demo models.

Front-end developers get a back end without GPUs (``make run``), and the test suite gets a real
HTTP peer whose answers are predictable and whose failures (errors, crashes, slow streams,
client disconnects) can be provoked on purpose. Stdlib only and independent of the rest of
chatsite, so it can never be broken by the code it is used to test.

This module is the entry point (``python -m chatsite.dev.instance``) and ``DevInstance``;
the parts live beside it: ``models`` (what the demo models say), ``answer`` (an answer before
any wire format), ``state`` (counters, failures, misbehaviour), ``server`` (HTTP and routing),
``ollama`` and ``openai`` (each protocol's endpoints and frames, under ``/api`` and ``/v1``)
and ``control`` (the ``/dev/*`` endpoints).
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from .fields import KNOBS, MAX_REPEAT, MAX_TOKEN_DELAY, DevHttpError
from .models import (
    MODELS,
    DemoModel,
    canonical_name,
    chat_reply,
    generate_reply,
    parse_tool_calls,
    thinking_for,
)
from .server import MAX_BODY, DevServer
from .state import KEEP_ALIVE, DevState

__all__ = [
    "KEEP_ALIVE",
    "KNOBS",
    "MAX_BODY",
    "MAX_REPEAT",
    "MAX_TOKEN_DELAY",
    "MODELS",
    "DemoModel",
    "DevHttpError",
    "DevInstance",
    "DevServer",
    "DevState",
    "canonical_name",
    "chat_reply",
    "generate_reply",
    "main",
    "parse_tool_calls",
    "thinking_for",
]


class DevInstance:
    """A DevServer on a background thread: what the tests and ``make run`` use."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token_delay: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        # bound now, so url works at once
        self.server = DevServer((host, port), token_delay, api_key)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        """The base URL of the OpenAI API, as an ``"api": "openai"`` instance is configured."""
        return f"{self.url}/v1"

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
        description="Ollama- and OpenAI-compatible (under /v1) server with demo models.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds to sleep before each token, for every model",
    )
    parser.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' of every /v1 call",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    instance = DevInstance(args.host, args.port, args.token_delay, args.api_key).start()
    print(f"chatsite dev instance on {instance.url} (models: {', '.join(MODELS)})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        instance.stop()


if __name__ == "__main__":
    main()
