"""/chat's stream: relay the reply, run tools for the model, save the chat file."""

import datetime
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..coordination import Lease
from ..llm.client import InstanceStream
from ..llm.pool import Slot
from ..tools import ToolContext, ToolRegistry
from .reply import NOT_SAVED, StreamedReply, error_line, ndjson_line

log = logging.getLogger(__name__)

TOO_MANY_ROUNDS = "\n\n[stopped: the model asked for tools too many times]"


def timestamp() -> str:
    """Now, as ISO 8601 UTC with milliseconds."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamped(messages: list[dict]) -> list[dict]:
    """Give every message a timestamp, keeping the ones it has."""
    now = timestamp()
    return [
        message if "timestamp" in message else {**message, "timestamp": now} for message in messages
    ]


def clean_tool_call(call: Any) -> dict:
    """Keep only the fields of a tool call that the chat file and the model need."""
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments")
    cleaned = {
        "function": {
            "name": str(function.get("name") or "")[:200],
            "arguments": arguments if isinstance(arguments, dict) else {},
        }
    }
    if isinstance(call, dict) and isinstance(call.get("id"), str):
        cleaned["id"] = call["id"][:200]
    return cleaned


@dataclass
class ToolRunner:
    """Everything the tool loop needs: the registry, the caller's context, limits."""

    registry: ToolRegistry
    context: ToolContext
    timeout: float
    max_rounds: int


class ChatReply(StreamedReply):
    """Relay `/api/chat`, answering tool calls on the same slot, and save the exchange."""

    def __init__(
        self,
        slot: Slot,
        upstream: InstanceStream,
        user_lease: Lease,
        payload: dict[str, Any],
        request_messages: list[dict],
        tools: ToolRunner | None = None,
        save: Callable[[list[dict]], None] | None = None,
    ) -> None:
        super().__init__(slot, upstream, user_lease)
        self.payload = payload
        self.request_messages = request_messages
        self.tools = tools
        self.save = save
        self.exchange: list[dict] = []  # tool calls and results, for the chat file
        self.round_pieces: list[str] = []

    def produce(self) -> Iterator[bytes]:
        rounds = 0
        while True:
            tool_calls = yield from self._relay_round()
            if not tool_calls or self.tools is None:
                break
            if rounds >= self.tools.max_rounds:
                self.pieces.append(TOO_MANY_ROUNDS)
                self.round_pieces.append(TOO_MANY_ROUNDS)
                yield ndjson_line({"status": "ok", "msg": TOO_MANY_ROUNDS, "done": False})
                break
            rounds += 1
            yield from self._run_tools(tool_calls)
            self.upstream = self.slot.instance.client.stream("/api/chat", self.payload)
        if not self.finish(complete=True):
            yield error_line(NOT_SAVED)
            return
        yield ndjson_line(
            {"status": "ok", "msg": "", "fullMsg": "".join(self.pieces), "done": True}
        )

    def _relay_round(self) -> Iterator[bytes]:
        """Stream one upstream answer to the client; return the tool calls it asked for."""
        self.round_pieces = []
        tool_calls: list[dict] = []
        for batch in self.upstream.batches():
            out = []  # the lines that came in one read go out in one write
            for line in batch:
                message = line.get("message") or {}
                piece = message.get("content")
                if piece:
                    self.pieces.append(piece)
                    self.round_pieces.append(piece)
                    out.append(ndjson_line({"status": "ok", "msg": piece, "done": False}))
                if isinstance(message.get("tool_calls"), list):
                    tool_calls.extend(clean_tool_call(call) for call in message["tool_calls"])
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
        self.upstream.close()
        return tool_calls

    def _run_tools(self, tool_calls: list[dict]) -> Iterator[bytes]:
        """Run each call, telling the client, and add the results to the conversation."""
        assistant = {
            "role": "assistant",
            "content": "".join(self.round_pieces),
            "tool_calls": tool_calls,
        }
        self.payload["messages"].append(assistant)
        self.exchange.append({**assistant, "timestamp": timestamp()})
        for call in tool_calls:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            yield ndjson_line({"status": "ok", "msg": "", "done": False, "tool": name})
            result = self.tools.registry.run(
                name, arguments, self.tools.context, self.tools.timeout
            )
            message = {"role": "tool", "content": result.content, "tool_name": name}
            self.payload["messages"].append(message)
            self.exchange.append({**message, "timestamp": timestamp()})

    def on_finish(self, complete: bool) -> None:
        if self.save is None:
            return
        reply: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.round_pieces),
            "timestamp": timestamp(),
        }
        if not complete:
            reply["incomplete"] = True
        self.save(stamped(self.request_messages) + self.exchange + [reply])
