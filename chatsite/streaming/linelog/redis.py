"""Answers' line logs in Redis Streams: a reader on any host follows an answer live.

One stream per answer, `{prefix}:answer:{<user>}:<chat>`: each entry is one line under an
id made of its seq (`0-<seq + 1>`), so reading from a seq is a range, and a batch sent again
after a lost reply is refused entry by entry instead of doubled. The entry after the last
line carries the end mark `e`. `XADD ... MAXLEN` keeps the latest `keep_lines` lines.

The producer sends each batch `AnswerLog` hands it in one pipeline (a connected client never
waits for Redis); a batch Redis did not take is kept and sent again with the next one, so a
reader elsewhere never finds a hole. While the answer runs, the user's key
`{prefix}:answering:{<user>}` names its chat (and this producer); a renewer thread (a
greenlet under gevent) keeps it, and the stream, alive every ttl/3. A producer that dies
without its last line (SIGKILL) lets that key expire within `ttl`: its readers then raise
`ProducerLost`. At the end the stream is kept `keep_seconds`, then expires. Redis restarted
empty: the renewer puts the key back; the lines sent before are gone, and a reader that
asks for them is told so (`"gap": true`).
"""

import logging
import secrets
import threading

import redis

from ... import defaults
from ...ids import canonical_uuid
from .redis_follow import END, LINE, RedisLineReader, entry_id

log = logging.getLogger(__name__)

DUPLICATE = "equal or smaller"  # XADD's refusal of an id already there: an entry sent twice

# KEYS: the user's answering key, stream, readers. ARGV: owner, ttl ms, stream ms. -> 1 or 0.
# A key found missing is put back (Redis restarted empty: the user's lock makes it ours),
# unless the log has its end mark (a renewal that crossed the end on its way).
_RENEW = """
local owner = redis.call('get', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
if not owner then
  local newest = redis.call('xrevrange', KEYS[2], '+', '-', 'COUNT', 1)[1]
  if newest and newest[2][1] == 'e' then return 0 end
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[3])
redis.call('pexpire', KEYS[3], ARGV[3])
return 1
"""
# KEYS: the user's answering key. ARGV: owner. Let go only of what is still ours.
_LET_GO = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# KEYS: readers. ARGV: reader id, ms it counts as reading. Redis's clock: hosts may disagree.
_MARK_READER = """
local t = redis.call('time')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""
# KEYS: readers. -> how many marks have not lapsed.
_COUNT_READERS = """
local t = redis.call('time')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
return redis.call('zcard', KEYS[1])
"""


def answer_keys(prefix: str, user_id: str, chat_id: str) -> tuple[str, str, str]:
    """(the user's answering key, the chat's stream, its readers), under the user's hash tag."""
    user, chat = canonical_uuid(user_id), canonical_uuid(chat_id)
    stream = f"{prefix}:answer:{{{user}}}:{chat}"
    return f"{prefix}:answering:{{{user}}}", stream, f"{stream}:readers"


class RedisSharedLog:
    """The producer's handle on one answer's stream; only its producer writes."""

    def __init__(self, store: "RedisLineStore", keys: tuple[str, str, str], chat: str) -> None:
        self._store = store
        self.answering, self.stream, self.readers_key = keys
        self.owner = f"{chat}/{secrets.token_hex(8)}"  # the chat, and this very answer
        self._unsent: list[tuple[int, bytes]] = []  # lines Redis did not take yet
        self._next = 0  # the seq after the last line written
        self._ended = False
        self._closed = False

    def write(self, lines: list[bytes], first: int) -> int:
        """Append the batch (and any earlier one Redis missed) and count the readers, in
        one round trip."""
        self._unsent.extend(zip(range(first, first + len(lines)), lines, strict=True))
        del self._unsent[: -self._store.keep_lines]  # never more than are kept
        self._next = first + len(lines)
        sent = self._send()
        return sent if sent is not None else self.readers()

    def _send(self, end: bool = False) -> int | None:
        """Send the unsent lines (and the end mark); None unless Redis has them all, else
        the readers counted with them (0 with the end mark)."""
        store = self._store
        pipe = store.client.pipeline(transaction=False)
        for seq, line in self._unsent:
            pipe.xadd(
                self.stream,
                {LINE: line},
                id=entry_id(seq),
                maxlen=store.keep_lines,
                approximate=False,  # "~" would keep up to a node (100) more: not a bound
            )
        if end:
            pipe.xadd(self.stream, {END: b"1"}, id=entry_id(self._next))
            pipe.pexpire(self.stream, store.keep_ms)
            pipe.pexpire(self.readers_key, store.keep_ms)
            store.let_go(keys=[self.answering], args=[self.owner], client=pipe)
        else:
            pipe.pexpire(self.stream, store.stream_ms)
            store.count_readers(keys=[self.readers_key], client=pipe)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            log.warning("could not write to %s; will send again", self.stream, exc_info=True)
            return None
        for result in results:
            if isinstance(result, Exception) and DUPLICATE not in str(result):
                log.warning("could not write to %s: %s; will send again", self.stream, result)
                return None
        self._unsent.clear()
        return 0 if end else int(results[-1])

    def end(self) -> None:
        """Mark the end after the last line, keep the log `keep_seconds`, free the user's key."""
        if self._ended:
            return
        self._ended = True
        self._store.forget(self)
        if self._send(end=True) is None:
            log.warning("the end of %s is not in Redis; readers see the answer lost", self.stream)

    def readers(self) -> int:
        """Readers that marked themselves within the last few seconds, on any host."""
        try:
            return int(self._store.count_readers(keys=[self.readers_key]))
        except redis.RedisError:
            log.warning("could not count the readers of %s", self.stream, exc_info=True)
            return 0

    def close(self) -> None:
        """Let go; a log that was never ended is seen as lost by its readers at once."""
        if self._closed:
            return
        self._closed = True
        self._store.forget(self)
        if self._ended:
            return
        try:
            self._store.let_go(keys=[self.answering], args=[self.owner])
        except redis.RedisError:
            log.warning("could not let go of %s; it expires within the ttl", self.answering)


class RedisLineStore:
    """Answers' logs in Redis, shared by every host; right with `RedisCoordinator`."""

    def __init__(
        self,
        url: str,
        prefix: str = defaults.REDIS_PREFIX,
        keep_seconds: float = defaults.RESUME_KEEP_SECONDS,
        keep_lines: int = defaults.RESUME_KEEP_LINES,
        ttl: float = defaults.LEASE_TTL,
    ) -> None:
        if ttl <= 0 or keep_seconds <= 0 or keep_lines <= 0:
            raise ValueError("ttl, keep_seconds and keep_lines must be positive")
        self.prefix = prefix
        self.keep_seconds = keep_seconds
        self.keep_lines = keep_lines
        self.ttl = ttl
        self.ttl_ms = max(1, round(ttl * 1000))
        self.keep_ms = max(1, round(keep_seconds * 1000))
        self.stream_ms = self.ttl_ms + self.keep_ms  # a dead producer's lines: kept as long
        self.client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
        )
        self.renew = self.client.register_script(_RENEW)
        self.let_go = self.client.register_script(_LET_GO)
        self.mark_reader = self.client.register_script(_MARK_READER)
        self.count_readers = self.client.register_script(_COUNT_READERS)
        self._open: set[RedisSharedLog] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def create(self, user_id: str, chat_id: str) -> RedisSharedLog:
        """Start the chat's new answer: drop an earlier log, name the chat as answering."""
        keys = answer_keys(self.prefix, user_id, chat_id)
        shared = RedisSharedLog(self, keys, canonical_uuid(chat_id))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(shared.stream, shared.readers_key)
        pipe.set(shared.answering, shared.owner, px=self.ttl_ms)
        pipe.execute()
        self._hold(shared)
        return shared

    def follow(self, user_id: str, chat_id: str, start: int) -> RedisLineReader | None:
        """A reader from `start`, or None when the chat has no log (any more)."""
        answering, stream, readers = answer_keys(self.prefix, user_id, chat_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(stream)
        pipe.get(answering)
        exists, owner = pipe.execute()
        if not exists and not _names(owner, chat_id):
            return None
        # The answer it follows: this producer's, or (None) one that has ended.
        owner = owner.decode() if _names(owner, chat_id) else None
        return RedisLineReader(self, (answering, stream, readers), owner, start)

    def generating(self, user_id: str, chat_id: str) -> bool:
        """True while a live producer names this chat as the user's answer."""
        answering, _, _ = answer_keys(self.prefix, user_id, chat_id)
        return _names(self.client.get(answering), chat_id)

    def generating_chat(self, user_id: str) -> str | None:
        """The chat whose answer a live producer of the user is writing, or None."""
        owner = self.client.get(f"{self.prefix}:answering:{{{canonical_uuid(user_id)}}}")
        return owner.decode().split("/", 1)[0] if owner else None

    # -- keeping producers alive --

    def _hold(self, shared: RedisSharedLog) -> None:
        """Renew the log's keys until it ends; start the renewer on first use (after fork)."""
        with self._lock:
            self._open.add(shared)
            renewer = self._renewer
            if not self._stop.is_set() and (renewer is None or not renewer.is_alive()):
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="chatsite-linelog-renewer", daemon=True
                )
                self._renewer.start()

    def forget(self, shared: RedisSharedLog) -> None:
        with self._lock:
            self._open.discard(shared)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._renew_all()
            except redis.RedisError:
                log.warning("could not renew answers' keys; will retry", exc_info=True)
            except Exception:
                log.exception("answers' renewer failed; retrying")

    def _renew_all(self) -> None:
        """Extend every open answer's keys in one round trip."""
        with self._lock:
            logs = list(self._open)
        if not logs:
            return
        pipe = self.client.pipeline(transaction=False)
        for shared in logs:
            keys = [shared.answering, shared.stream, shared.readers_key]
            self.renew(keys=keys, args=[shared.owner, self.ttl_ms, self.stream_ms], client=pipe)
        for shared, renewed in zip(logs, pipe.execute(), strict=True):
            if not renewed and not shared._ended:
                log.warning("answer %s lost its key while it ran", shared.stream)

    def close(self) -> None:
        """Stop renewing and drop the connections; open answers' keys expire within `ttl`."""
        self._stop.set()
        renewer = self._renewer
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(timeout=self.ttl)
        self.client.close()


def _names(owner: bytes | None, chat_id: str) -> bool:
    """Whether the user's answering key names this chat."""
    return owner is not None and owner.decode().split("/", 1)[0] == canonical_uuid(chat_id)
