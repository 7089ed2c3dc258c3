"""/chat's stream: relay the reply and its thinking, run tools for the model, save the chat."""

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..clock import utc_stamp
from ..coordination import Lease
from ..llm.pool import Admission
from ..llm.protocols.base import TOOL, ChatRequest, ToolCall, ToolCalls
from ..storage.saves import Saved
from ..tools import ToolContext, ToolRegistry
from ..tools.arguments import too_deep
from .limits import LENGTH_NOTE, MAX_TOOL_CALLS, TOO_MANY_ROUNDS, ReplyRoom
from .reply import NOT_SAVED, Stopped, StreamedReply, error_line

log = logging.getLogger(__name__)

TOO_MANY_CALLS = "error: too many tool calls in one round (at most {max_calls}): not run"
# The saved answer of a call whose tool never answered (a drain, a client gone, a failure):
# every saved tool call has its result, as Ollama and OpenAI-compatible servers require.
INTERRUPTED = "interrupted"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # what `utc_stamp()` writes


class Clock:
    """Timestamps for one request that never go backwards, even if the wall clock does.

    It starts after the latest stamp in the chat that it wrote itself (same format), so a
    chat's stamps keep their order across requests too.
    """

    def __init__(self, messages: Iterable[dict] = ()) -> None:
        stamps = (m.get("timestamp") for m in messages)
        self.last = max((s for s in stamps if isinstance(s, str) and STAMP.match(s)), default="")

    def now(self) -> str:
        """The later of now and the last stamp given."""
        self.last = max(utc_stamp(), self.last)
        return self.last


def stamped(messages: list[dict], clock: Clock) -> list[dict]:
    """Give every message a timestamp (one for all: they arrived together), keeping theirs."""
    now = clock.now()
    return [
        message if "timestamp" in message else {**message, "timestamp": now} for message in messages
    ]


def without_deep_arguments(call: dict) -> dict:
    """The call as sent back to the model and saved: arguments too deep to encode again are
    dropped (the tool's answer says why)."""
    if not too_deep(call["function"]["arguments"]):
        return call
    return {**call, "function": {**call["function"], "arguments": {}}}


@dataclass
class ToolRunner:
    """Everything the tool loop needs: the registry, the caller's context, limits."""

    registry: ToolRegistry
    context: ToolContext
    timeout: float
    max_rounds: int
    max_calls: int


class ChatReply(StreamedReply):
    """Relay a chat answer, answering tool calls on the same slot, and save the exchange.

    Each text is saved once: a round's text and thinking go with its tool calls, and the
    saved reply holds only what came after the last tool round.
    """

    numbered = True

    def __init__(
        self,
        admission: Admission,
        user_lease: Lease,
        request: ChatRequest,
        request_messages: list[dict],
        room: ReplyRoom,
        clock: Clock,
        tool_runner: ToolRunner | None = None,
        save: Callable[[list[dict]], Saved] | None = None,
        checkpoint: Callable[[list[dict]], bool] | None = None,
    ) -> None:
        super().__init__(admission, user_lease)
        self.request = request  # its messages grow by each tool round
        self.request_messages = request_messages  # stamped when the request arrived
        self.room = room
        self.clock = clock
        self.tool_runner = tool_runner
        self.save = save
        self.save_checkpoint = checkpoint  # saves an answer in progress, never journaled
        self.exchange: list[dict] = []  # tool calls and results, for the chat file
        self.content: list[str] = []  # this round's text
        self.thinking: list[str] = []  # this round's thinking
        self.unanswered: list[str] = []  # tool names of this round's calls still running

    def produce(self) -> Iterator[dict | list[dict]]:
        rounds = 0
        while True:
            calls = yield from self._relay_round()
            if not calls or self.tool_runner is None:
                break
            assistant = self._tool_round_message(calls)
            if rounds >= self.tool_runner.max_rounds:
                yield self._end_with(TOO_MANY_ROUNDS)
                break
            if not self.room.take_tool_round(assistant, len(calls)):
                yield self._end_with(LENGTH_NOTE)
                break
            rounds += 1
            yield from self._run_tools(assistant, calls)
            self.upstream.release()
            self.upstream = self.slot.instance.start(self.request)
        if not self.finish(complete=True):
            yield error_line(NOT_SAVED)
            return
        yield self.ending(self.last_line())

    def last_line(self) -> dict:
        return {"status": "ok", "msg": "", "fullMsg": "".join(self.pieces), "done": True}

    def _relay_round(self) -> Iterator[dict | list[dict]]:
        """Stream one upstream answer to the client; return the tool calls it asked for.

        A text that reaches its limit ends the reply: the upstream is left unread (and
        closed by `finish`), and no tool is run.
        """
        self.content, self.thinking = [], []
        calls = ToolCalls()
        room = self.room
        for batch in self.upstream.batches():
            out: list[dict] = []  # the pieces that came in one read go out in one write
            for kind, value in batch:
                if kind == TOOL:
                    calls.add(value)
                    continue
                fitted, full = room.take(kind, value)
                if fitted:
                    out.append(self._relay(kind, fitted))
                if full:
                    out.append(self._end_with(LENGTH_NOTE))
                    yield out
                    return []
            if out:
                yield out[0] if len(out) == 1 else out
        if not calls:
            return []
        assembled = calls.calls()
        if len(assembled) > MAX_TOOL_CALLS:
            log.warning(
                "model asked for %d tool calls in one round; ran the first %d",
                len(assembled),
                MAX_TOOL_CALLS,
            )
        return assembled[:MAX_TOOL_CALLS]

    def _relay(self, kind: str, piece: str) -> dict:
        """Keep a piece of the reply (or of its thinking) and make its stream line."""
        if kind == "thinking":
            self.thinking.append(piece)
            self.thinking_pieces += 1
            return {"status": "ok", "msg": "", "thinking": piece, "done": False}
        self.content.append(piece)
        self.pieces.append(piece)
        return {"status": "ok", "msg": piece, "done": False}

    def _end_with(self, note: str) -> dict:
        """Close the reply's text with a note saying why it stops here."""
        return self._relay("content", self.room.note(note))

    def _tool_round_message(self, calls: list[ToolCall]) -> dict[str, Any]:
        """The assistant message of a tool round, as the model will see it again."""
        message = {
            "role": "assistant",
            "content": "".join(self.content),
            "tool_calls": [without_deep_arguments(call.call) for call in calls],
        }
        if self.thinking:
            message["thinking"] = "".join(self.thinking)
        return message

    def _run_tools(self, assistant: dict[str, Any], calls: list[ToolCall]) -> Iterator[dict]:
        """Run each call, telling the client, and add the results to the conversation.

        After a /stop no further call is run: the round's calls not yet answered are saved
        as interrupted.
        """
        self.request.messages.append(assistant)
        self.exchange.append({**assistant, "timestamp": self.clock.now()})
        self.content, self.thinking = [], []  # saved with the tool calls: never again
        self.unanswered = [call.call["function"]["name"] for call in calls]
        max_calls = self.tool_runner.max_calls
        for index, call in enumerate(calls):
            if self.stopped:
                raise Stopped()
            name, arguments = call.call["function"]["name"], call.arguments
            if index < max_calls:
                yield {"status": "ok", "msg": "", "done": False, "tool": name}
                result = self.tool_runner.registry.run(
                    name, arguments, self.tool_runner.context, self.tool_runner.timeout
                ).content
            else:
                result = TOO_MANY_CALLS.format(max_calls=max_calls)
            message = self._tool_result(name, result)
            self.request.messages.append(message)
            self.exchange.append({**message, "timestamp": self.clock.now()})
            self.unanswered.pop(0)

    def _tool_result(self, name: str, content: str) -> dict[str, Any]:
        """A tool message answering a call, within the room `take_tool_round` kept for it."""
        return {"role": "tool", "content": self.room.take_tool_result(content), "tool_name": name}

    def _interrupted_results(self) -> list[dict]:
        """An `interrupted` answer to each call of the round that was cut short."""
        now = self.clock.now()
        # "interrupted" fits the room each result has kept for its note: nothing is taken.
        return [
            {**self._tool_result(name, INTERRUPTED), "timestamp": now} for name in self.unanswered
        ]

    def on_finish(self, complete: bool) -> None:
        if self.save is None:
            return
        saved = self.save(self._so_far(complete))
        self.unanswered = []
        self.save_pending = saved is Saved.PENDING

    def checkpoint(self) -> bool:
        """Save the answer so far as incomplete, while it runs: a killed worker then loses
        at most what came since. Nothing before it relays, or once it is finished."""
        if self.save_checkpoint is None or self.upstream is None or self._finished:
            return False
        self.save_checkpoint(self._so_far(complete=False))
        return True

    def _so_far(self, complete: bool) -> list[dict]:
        """The chat to save: the request, the tool exchanges and the reply as it stands."""
        answered = self.exchange + self._interrupted_results()  # stamped before the reply
        reply: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content),
            "timestamp": self.clock.now(),
        }
        if self.thinking:
            reply["thinking"] = "".join(self.thinking)
        if not complete:
            reply["incomplete"] = True
        return self.request_messages + answered + [reply]
