"""The lines of waiting requests and stop requests of every host, in Redis.

A model's line is a sorted set of waiters scored by a ticket from INCR (arrival order
across hosts). Each waiter keeps a heartbeat key with a short TTL alive while it waits, so
the waiters of a crashed host are pruned within `HEARTBEAT` seconds by whoever looks at the
line next; a live waiter pruned by mistake (a stalled worker) puts itself back with its own
ticket. The line's keys share a {hash tag}: the Lua scripts stay cluster-safe. A Redis that
restarted empty gets each waiter back, with its own ticket, from the worker it waits in
(`RESTORE`; `POSITION` too puts its waiter back), and the ticket counter is moved past it,
so newcomers still line up behind.

One subscriber thread per process (a greenlet under gevent) listens on a channel: releasing
a slot or leaving a line publishes a wake-up there, /stop publishes the user's id.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import redis

from .base import EventTicket, model_key
from .signals import LocalSignals

log = logging.getLogger(__name__)

HEARTBEAT = 1.5  # seconds a waiter counts as alive without refreshing (it does every 0.5 s)
WAKE = "w"
STOP = "s"

# KEYS: line, counter. ARGV: member, limit, heartbeat prefix, heartbeat ms. -> ticket or -1.
JOIN = """
local function prune()
  for _, m in ipairs(redis.call('zrange', KEYS[1], 0, -1)) do
    if redis.call('exists', ARGV[3] .. m) == 0 then redis.call('zrem', KEYS[1], m) end
  end
end
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[2]) then
  prune()
  if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
end
local ticket = redis.call('incr', KEYS[2])
redis.call('zadd', KEYS[1], ticket, ARGV[1])
redis.call('set', ARGV[3] .. ARGV[1], '1', 'PX', ARGV[4])
return ticket
"""
# Put a waiter back with its own ticket; keep the counter past it (newcomers line up behind).
# KEYS: line, counter. ARGV: member, ticket, heartbeat prefix, heartbeat ms.
_PUT_BACK = """
redis.call('set', ARGV[3] .. ARGV[1], '1', 'PX', ARGV[4])
if not redis.call('zscore', KEYS[1], ARGV[1]) then
  redis.call('zadd', KEYS[1], ARGV[2], ARGV[1])
  if tonumber(redis.call('get', KEYS[2]) or '0') < tonumber(ARGV[2]) then
    redis.call('set', KEYS[2], ARGV[2])
  end
end
"""
RESTORE = _PUT_BACK + "return 1"
# KEYS: line, counter. ARGV: as RESTORE. -> live waiters ahead.
POSITION = (
    _PUT_BACK
    + """
local live = 0
for _, m in ipairs(redis.call('zrangebyscore', KEYS[1], '-inf', '(' .. ARGV[2])) do
  if redis.call('exists', ARGV[3] .. m) == 1 then live = live + 1
  else redis.call('zrem', KEYS[1], m) end
end
return live
"""
)
# KEYS: line. ARGV: member, heartbeat prefix, channel.
LEAVE = """
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('del', ARGV[2] .. ARGV[1])
redis.call('publish', ARGV[3], 'w')
return 1
"""


class Subscriber:
    """This process's listener on the channel: wake-ups and stop requests."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        signals: LocalSignals,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._signals = signals
        self._on_lost = on_lost  # the channel dropped: Redis may have restarted
        self.stopped = threading.Event()
        self.ready = threading.Event()  # set once Redis confirmed the subscription
        self._thread = threading.Thread(target=self._listen, name="chatsite-events", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self.stopped.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self._channel)
                while not self.stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.ready.set()
                    elif message["type"] == "message":
                        self._deliver(message["data"])
            except redis.RedisError as error:
                self.ready.clear()
                self._on_lost()
                log.warning("event channel lost (%s); resubscribing", error)
                self._signals.wake_all()  # waiters look again rather than miss a release
                time.sleep(1.0)
            except Exception:
                log.exception("event listener failed; restarting")
                time.sleep(1.0)
            finally:
                pubsub.close()

    def _deliver(self, data: bytes) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        if text == WAKE:
            self._signals.wake_all()
        elif text.startswith(STOP):
            self._signals.stop(text[len(STOP) :])


class LineOwner(Protocol):
    """What a ticket needs of the coordinator that made it (RedisCoordinator)."""

    signals: LocalSignals
    channel: str
    heartbeat_ms: int
    _position: Any  # the POSITION script
    _leave: Any  # the LEAVE script
    _restore_ticket: Any  # the RESTORE script

    def heartbeat_prefix(self, line: str) -> str: ...

    def reaching(self) -> AbstractContextManager[None]: ...

    def settled(self) -> None: ...

    def untrack(self, ticket: "RedisTicket") -> None: ...


class RedisTicket(EventTicket):
    """A member of the model's line, with a heartbeat refreshed at every look."""

    def __init__(self, owner: LineOwner, line: str, counter: str, member: str, ticket: int) -> None:
        super().__init__(owner.signals)
        self._owner = owner
        self._line = line
        self._counter = counter
        self.member = member
        self.ticket = ticket

    def _args(self) -> list:
        owner = self._owner
        return [self.member, self.ticket, owner.heartbeat_prefix(self._line), owner.heartbeat_ms]

    def position(self) -> int:
        """The place among live waiters; `CoordinationUnavailable` while Redis is away, or
        rebuilt but not yet given back every waiter of every worker."""
        with self._owner.reaching():
            ahead = self._owner._position(keys=[self._line, self._counter], args=self._args())
        self._owner.settled()  # its heartbeat is kept, but a count taken now may be short
        return int(ahead) + 1

    def restore(self, pipe: Any) -> None:
        """Put this waiter back into a line Redis lost, with its own ticket (in `pipe`)."""
        self._owner._restore_ticket(
            keys=[self._line, self._counter], args=self._args(), client=pipe
        )

    def _leave(self) -> None:
        self._owner.untrack(self)
        self.remove()

    def remove(self) -> None:
        """Take this waiter out of the line in Redis and wake those behind."""
        owner = self._owner
        try:
            owner._leave(
                keys=[self._line],
                args=[self.member, owner.heartbeat_prefix(self._line), owner.channel],
            )
        except redis.RedisError:
            log.warning("could not leave %s; pruned within %s s", self._line, HEARTBEAT)


def line_keys(prefix: str, model: str) -> tuple[str, str]:
    """The model's line and its ticket counter, under one hash tag."""
    base = f"{prefix}:line:{{{model_key(model)}}}"
    return base, f"{base}:tickets"
