"""User locks and instance slots shared by all hosts, through Redis.

Each lock is a key holding a random token, set with NX and a TTL. A renewer thread (a
greenlet under gevent's monkey patch) extends every lease still held every ttl/3, so leases
outlive long streamed answers, while the locks of a crashed host expire within `ttl` seconds.
Release and renewal compare the token in Lua: a holder whose key expired and was taken by
someone else never deletes or extends the new holder's lock. Releasing a slot publishes a
wake-up for the waiters of every host; the lines themselves live in `redis_queue`.
"""

import itertools
import logging
import random
import secrets
import threading
from collections.abc import Callable

import redis

from .. import defaults
from ..ids import canonical_uuid
from . import redis_queue
from .base import Lease, instance_key
from .redis_queue import RedisTicket, Subscriber, line_keys
from .signals import LocalSignals

log = logging.getLogger(__name__)

SUBSCRIBE_WAIT = 2.0  # seconds a worker's first request waits for its event subscription

# Take the first free key of KEYS (slots in a random rotation); return its 1-based index or 0.
_ACQUIRE = """
for i = 1, #KEYS do
  if redis.call('set', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then return i end
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  if ARGV[2] then redis.call('publish', ARGV[2], 'w') end
  return redis.call('del', KEYS[1])
end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class RedisLease:
    """One held key; `release()` deletes it only while it still holds our token."""

    __slots__ = ("_owner", "key", "token", "wakes")

    def __init__(self, owner: "RedisCoordinator", key: str, token: str, wakes: bool) -> None:
        self._owner = owner
        self.key = key
        self.token = token
        self.wakes = wakes  # a slot: its release wakes the waiters

    def release(self) -> None:
        """Give the lock back once; a Redis error only leaves it to expire within ttl."""
        if not self._owner._forget(self):
            return
        try:
            args = [self.token, self._owner.channel] if self.wakes else [self.token]
            self._owner._release(keys=[self.key], args=args)
        except redis.RedisError:
            log.warning("could not release %s; it expires within the ttl", self.key, exc_info=True)


class RedisCoordinator:
    """Redis-backed locks and slots with renewed TTLs: right for several hosts."""

    def __init__(
        self, url: str, prefix: str = defaults.REDIS_PREFIX, ttl: float = defaults.LEASE_TTL
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.prefix = prefix
        self.ttl = ttl
        self._ttl_ms = max(1, round(ttl * 1000))
        self._redis = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._join = self._redis.register_script(redis_queue.JOIN)
        self._position = self._redis.register_script(redis_queue.POSITION)
        self._leave = self._redis.register_script(redis_queue.LEAVE)
        self.channel = f"{prefix}:events"
        self.heartbeat_ms = round(redis_queue.HEARTBEAT * 1000)
        self.signals = LocalSignals()
        self._subscriber: Subscriber | None = None
        self._members = itertools.count()
        self._process = secrets.token_hex(8)
        self._capacity: dict[str, int] = {}  # largest capacity seen per instance url
        self._held: set[RedisLease] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- leases and their renewal --

    def _hold(self, key: str, token: str, wakes: bool = False) -> RedisLease:
        """Register a fresh lease for renewal, starting the renewer on first use (after fork)."""
        lease = RedisLease(self, key, token, wakes)
        with self._lock:
            self._held.add(lease)
            renewer = self._renewer
            if not self._stop.is_set() and (renewer is None or not renewer.is_alive()):
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="chatsite-lease-renewer", daemon=True
                )
                self._renewer.start()
        return lease

    def _forget(self, lease: RedisLease) -> bool:
        """Stop renewing `lease`; True only the first time (and only if it was not lost)."""
        with self._lock:
            if lease not in self._held:
                return False
            self._held.discard(lease)
            return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._renew_all()
            except redis.RedisError:
                log.warning("could not renew leases; will retry", exc_info=True)
            except Exception:
                log.exception("lease renewer failed; retrying")

    def _renew_all(self) -> None:
        """Extend every held lease in one round trip; drop and report the ones found lost."""
        with self._lock:
            leases = list(self._held)
        if not leases:
            return
        pipe = self._redis.pipeline(transaction=False)
        for lease in leases:
            self._renew(keys=[lease.key], args=[lease.token, self._ttl_ms], client=pipe)
        for lease, renewed in zip(leases, pipe.execute(), strict=True):
            if not renewed and self._forget(lease):  # not released meanwhile: truly lost
                log.warning("lease %s was lost (expired or taken over) while held", lease.key)

    def _check_open(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("RedisCoordinator is closed")

    # -- the Coordinator protocol --

    def try_lock_user(self, user_id: str, chat_id: str | None = None) -> Lease | None:
        """Take the user's lock at once, or None if held on any host; Redis errors raise.

        The key holds `<token>` or `<token> <chat id>`: the chat lives and expires with it.
        """
        self._check_open()
        key = f"{self.prefix}:user:{canonical_uuid(user_id)}"
        token = secrets.token_hex(16)
        if chat_id is not None:
            token = f"{token} {canonical_uuid(chat_id)}"
        if not self._redis.set(key, token, nx=True, px=self._ttl_ms):
            return None
        return self._hold(key, token)

    def user_busy(self, user_id: str) -> bool:
        """Tell whether any host holds the user's lock."""
        return bool(self._redis.exists(f"{self.prefix}:user:{canonical_uuid(user_id)}"))

    def generating_chat(self, user_id: str) -> str | None:
        """The chat written by the request holding the user's lock on any host, or None."""
        value = self._redis.get(f"{self.prefix}:user:{canonical_uuid(user_id)}")
        _, _, chat_id = (value or b"").decode("ascii", "replace").partition(" ")
        return chat_id or None

    def _slot_keys(self, instance: str, capacity: int) -> list[str]:
        # The {hash tag} keeps an instance's slots in one cluster slot (multi-key Lua, EXISTS).
        base = f"{self.prefix}:slot:{{{instance_key(instance)}}}"
        return [f"{base}:{i}" for i in range(capacity)]

    def _remember_capacity(self, instance: str, capacity: int) -> None:
        """Keep the largest capacity, here and in Redis for workers that never acquired yet."""
        if capacity > self._capacity.get(instance, 0):
            self._capacity[instance] = capacity
            self._redis.hset(f"{self.prefix}:capacity", instance_key(instance), capacity)

    def try_acquire_slot(self, instance: str, capacity: int) -> Lease | None:
        """Atomically take a free slot key of the instance, or None; Redis errors raise."""
        self._check_open()
        self._remember_capacity(instance, capacity)
        if capacity <= 0:
            return None
        keys = self._slot_keys(instance, capacity)
        start = random.randrange(capacity)
        keys = keys[start:] + keys[:start]
        token = secrets.token_hex(16)
        taken = int(self._acquire(keys=keys, args=[token, self._ttl_ms]))
        return self._hold(keys[taken - 1], token, wakes=True) if taken else None

    def slots_in_use(self, instance: str) -> int:
        """Count the instance's slot keys that exist, up to the largest capacity known."""
        capacity = self._capacity.get(instance)
        if capacity is None:
            stored = self._redis.hget(f"{self.prefix}:capacity", instance_key(instance))
            capacity = int(stored) if stored else 0
        if capacity <= 0:
            return 0
        return int(self._redis.exists(*self._slot_keys(instance, capacity)))

    # -- lines and stop requests --

    def _listen(self) -> None:
        """Start this process's subscriber on first use (after a fork: one per worker).

        The first caller waits (briefly) for the subscription, so that nothing published
        right after, such as a stop for this very request, is missed.
        """
        with self._lock:
            subscriber = self._subscriber
            if subscriber is None or not subscriber._thread.is_alive():
                subscriber = self._subscriber = Subscriber(self._redis, self.channel, self.signals)
        if not subscriber.ready.is_set():
            subscriber.ready.wait(SUBSCRIBE_WAIT)

    def _heartbeat_prefix(self, line: str) -> str:
        return f"{line}:alive:"

    def waiting(self, model: str) -> int:
        """Count the members of the model's line (the dead are pruned at the next look)."""
        return int(self._redis.zcard(line_keys(self.prefix, model)[0]))

    def join_queue(self, model: str, limit: int) -> RedisTicket | None:
        """Take a ticket at the end of the model's line on every host, or None when full."""
        self._check_open()
        self._listen()
        line, counter = line_keys(self.prefix, model)
        member = f"{self._process}:{next(self._members)}"
        ticket = int(
            self._join(
                keys=[line, counter],
                args=[member, limit, self._heartbeat_prefix(line), self.heartbeat_ms],
            )
        )
        if ticket < 0:
            return None
        return RedisTicket(self, line, member, ticket)

    def request_stop(self, user_id: str) -> None:
        """Publish a stop for the user to every process of every host."""
        self._redis.publish(self.channel, redis_queue.STOP + canonical_uuid(user_id))

    def watch_stop(self, user_id: str, callback: Callable[[], None]) -> Lease:
        """Run `callback` when any host asks to stop the user's request."""
        self._listen()
        return self.signals.watch_stop(canonical_uuid(user_id), callback)

    def close(self) -> None:
        """Stop renewing and drop the connections; unreleased leases expire within `ttl`."""
        self._stop.set()
        if self._subscriber is not None:
            self._subscriber.stopped.set()
        renewer = self._renewer
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(timeout=self.ttl)
        self._redis.close()
