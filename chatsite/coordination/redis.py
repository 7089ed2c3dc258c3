"""User locks and instance slots shared by all hosts, through Redis.

Each lock is a key holding a random token, set with NX and a TTL. A keeper thread (a
greenlet under gevent's monkey patch) extends every lease still held every ttl/3, so leases
outlive long streamed answers, while the locks of a crashed host expire within `ttl` seconds.
Release and renewal compare the token in Lua: a holder whose key expired and was taken by
someone else never deletes or extends the new holder's lock. Releasing a slot publishes a
wake-up for the waiters of every host; the lines themselves live in `redis_queue`.

Redis restarted without persistence comes back empty, but every worker still knows what it
holds and who of its own waits. An epoch key, set by whoever finds it missing, tells the
workers that Redis lost its data: each one then puts back its leases (same keys, same tokens)
and its waiters (same arrival tickets), and for `RECOVERY_SECONDS` nothing new is handed out
(a `CoordinationUnavailable`, as while Redis is away), so that no slot is taken twice and no
newcomer gets ahead of those already waiting. The keeper looks at the epoch every
`CHECK_EVERY` seconds while its worker holds anything, well within that time.
"""

import contextlib
import itertools
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from .. import defaults
from ..ids import canonical_uuid
from . import redis_queue
from .base import CoordinationUnavailable, Lease, instance_key
from .redis_queue import RedisTicket, Subscriber, line_keys
from .signals import LocalSignals

log = logging.getLogger(__name__)

SUBSCRIBE_WAIT = 2.0  # seconds a worker's first request waits for its event subscription
# Redis away: can't connect, timed out, or a replica that became read-only in a failover.
OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)
# After Redis came back empty: seconds in which only what was held before is put back.
RECOVERY_SECONDS = 2.0
# Seconds between two looks at the epoch while this worker holds leases or waiters.
CHECK_EVERY = 0.5
# A command that meets a dropped connection is tried again at once on a new one (a Redis
# restart), but a Redis that is away is reported within a fraction of a second.
RETRY = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)

# KEYS: epoch, recovering. ARGV: a new epoch, "1" to start a recovery if the epoch was
# missing, its ms. -> {the epoch, ms left of the recovery (negative: none)}.
_EPOCH = """
local current = redis.call('get', KEYS[1])
if not current then
  current = ARGV[1]
  redis.call('set', KEYS[1], current)
  if ARGV[2] == '1' then redis.call('set', KEYS[2], '1', 'PX', ARGV[3]) end
end
return {current, redis.call('pttl', KEYS[2])}
"""
# Put a held lease back after Redis lost it: 1 if it is ours again, 0 if another took it.
_RESTORE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

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
        self.delete()

    def delete(self) -> None:
        """Delete the key if it still holds our token (waking the waiters for a slot)."""
        try:
            args = [self.token, self._owner.channel] if self.wakes else [self.token]
            self._owner._release(keys=[self.key], args=args)
        except redis.RedisError as error:
            log.warning("could not release %s (%s); it expires within the ttl", self.key, error)


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
            url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30, retry=RETRY
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._restore_lease = self._redis.register_script(_RESTORE)
        self._epoch_script = self._redis.register_script(_EPOCH)
        self._join = self._redis.register_script(redis_queue.JOIN)
        self._position = self._redis.register_script(redis_queue.POSITION)
        self._leave = self._redis.register_script(redis_queue.LEAVE)
        self._restore_ticket = self._redis.register_script(redis_queue.RESTORE)
        self._epoch_keys = [f"{prefix}:{{epoch}}", f"{prefix}:{{epoch}}:recovering"]
        self._epoch: bytes | None = None  # the epoch this worker last saw
        self._troubled = False  # Redis failed us since the last look at the epoch
        self.channel = f"{prefix}:events"
        self.heartbeat_ms = round(redis_queue.HEARTBEAT * 1000)
        self.signals = LocalSignals()
        self._subscriber: Subscriber | None = None
        self._members = itertools.count()
        self._process = secrets.token_hex(8)
        self._capacity: dict[str, int] = {}  # largest capacity seen per instance url
        self._held: set[RedisLease] = set()
        self._tickets: set[RedisTicket] = set()  # this worker's waiters, to put back
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    @contextlib.contextmanager
    def reaching(self) -> Iterator[None]:
        """Turn Redis being away into `CoordinationUnavailable`, and remember it."""
        try:
            yield
        except OUTAGE as error:
            self._troubled = True
            raise CoordinationUnavailable() from error

    # -- leases and their renewal --

    def _hold(self, key: str, token: str, wakes: bool = False) -> RedisLease:
        """Register a fresh lease for renewal, starting the keeper on first use (after fork)."""
        lease = RedisLease(self, key, token, wakes)
        with self._lock:
            self._held.add(lease)
            self._start_keeper()
        return lease

    def track(self, ticket: RedisTicket) -> None:
        """Remember a waiter of this worker, to put it back if Redis loses the line."""
        with self._lock:
            self._tickets.add(ticket)
            self._start_keeper()

    def untrack(self, ticket: RedisTicket) -> None:
        with self._lock:
            self._tickets.discard(ticket)

    def _start_keeper(self) -> None:
        """Start the keeper thread if it is not running (called holding `_lock`)."""
        keeper = self._keeper
        if not self._stop.is_set() and (keeper is None or not keeper.is_alive()):
            self._keeper = threading.Thread(
                target=self._keep_loop, name="chatsite-lease-keeper", daemon=True
            )
            self._keeper.start()

    def _forget(self, lease: RedisLease) -> bool:
        """Stop renewing `lease`; True only the first time (and only if it was not lost)."""
        with self._lock:
            if lease not in self._held:
                return False
            self._held.discard(lease)
            return True

    def _keep_loop(self) -> None:
        """Renew the leases every ttl/3; while anything is held, watch for a Redis reset."""
        renewed = time.monotonic()
        while not self._stop.wait(min(CHECK_EVERY, self.ttl / 3)):
            if not (self._held or self._tickets):
                continue
            troubled = self._troubled
            try:
                self.check_epoch()
                if time.monotonic() - renewed >= self.ttl / 3:
                    self._renew_all()
                    renewed = time.monotonic()
            except (CoordinationUnavailable, redis.RedisError) as error:
                self._troubled = True
                if not troubled:
                    log.warning("Redis is unavailable (%s); holding on to what is held", error)
            except Exception:
                log.exception("lease keeper failed; retrying")

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

    # -- Redis restarted empty: the epoch and the recovery --

    def check_epoch(self) -> float:
        """Notice that Redis lost its data and put back what this worker holds; return the
        seconds left of a recovery in progress (0: none).

        A worker that knew the epoch, or met Redis away, and finds no epoch, starts the
        recovery; a fresh deployment (nobody knew one) starts none.
        """
        evidence = self._epoch is not None or self._troubled
        with self.reaching():
            current, left = self._epoch_script(
                keys=self._epoch_keys,
                args=[secrets.token_hex(8), int(evidence), round(RECOVERY_SECONDS * 1000)],
            )
        known, self._epoch, self._troubled = self._epoch, current, False
        if known is not None and current != known:
            self._restore()
        return max(0, int(left)) / 1000

    def settled(self) -> None:
        """Raise `CoordinationUnavailable` while Redis is away or being rebuilt: then
        nothing is handed out, and places in line are not yet all back."""
        if self.check_epoch() > 0:
            raise CoordinationUnavailable()

    def _admitting(self) -> None:
        self._check_open()
        self.settled()

    def _restore(self) -> None:
        """Put back this worker's leases (same tokens) and waiters (same tickets)."""
        with self._lock:
            leases, tickets = list(self._held), list(self._tickets)
        log.warning(
            "Redis lost its data (restarted empty?): putting back %d leases and %d waiters",
            len(leases),
            len(tickets),
        )
        with self.reaching():
            pipe = self._redis.pipeline(transaction=False)
            for lease in leases:
                self._restore_lease(keys=[lease.key], args=[lease.token, self._ttl_ms], client=pipe)
            for ticket in tickets:
                ticket.restore(pipe)
            results = pipe.execute()
        for lease, restored in zip(leases, results, strict=False):
            if not restored and self._forget(lease):
                log.warning("lease %s was taken by another while Redis was rebuilt", lease.key)
            elif lease not in self._held:  # released meanwhile: it must not stay behind
                lease.delete()
        for ticket in tickets:
            if ticket not in self._tickets:
                ticket.remove()
        self.signals.wake_all()  # every waiter of this worker looks at the line again

    # -- the Coordinator protocol --

    def try_lock_user(self, user_id: str, chat_id: str | None = None) -> Lease | None:
        """Take the user's lock at once, or None if held on any host; Redis errors raise.

        The key holds `<token>` or `<token> <chat id>`: the chat lives and expires with it.
        """
        key = f"{self.prefix}:user:{canonical_uuid(user_id)}"
        self._admitting()
        token = secrets.token_hex(16)
        if chat_id is not None:
            token = f"{token} {canonical_uuid(chat_id)}"
        with self.reaching():
            if not self._redis.set(key, token, nx=True, px=self._ttl_ms):
                return None
        return self._hold(key, token)

    def user_busy(self, user_id: str) -> bool:
        """Tell whether any host holds the user's lock."""
        key = f"{self.prefix}:user:{canonical_uuid(user_id)}"
        with self.reaching():
            return bool(self._redis.exists(key))

    def generating_chat(self, user_id: str) -> str | None:
        """The chat written by the request holding the user's lock on any host, or None."""
        with self.reaching():
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
            self._redis.hset(f"{self.prefix}:capacity", instance_key(instance), capacity)
            self._capacity[instance] = capacity

    def try_acquire_slot(self, instance: str, capacity: int) -> Lease | None:
        """Atomically take a free slot key of the instance, or None; Redis errors raise."""
        self._admitting()
        with self.reaching():
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
        with self.reaching():
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
                subscriber = self._subscriber = Subscriber(
                    self._redis, self.channel, self.signals, self._lost_channel
                )
        if not subscriber.ready.is_set():
            subscriber.ready.wait(SUBSCRIBE_WAIT)

    def _lost_channel(self) -> None:
        """The event channel dropped: Redis may be away, or restarting empty."""
        self._troubled = True

    def heartbeat_prefix(self, line: str) -> str:
        return f"{line}:alive:"

    def waiting(self, model: str) -> int:
        """Count the members of the model's line (the dead are pruned at the next look)."""
        with self.reaching():
            return int(self._redis.zcard(line_keys(self.prefix, model)[0]))

    def join_queue(self, model: str, limit: int) -> RedisTicket | None:
        """Take a ticket at the end of the model's line on every host, or None when full."""
        self._admitting()
        self._listen()
        line, counter = line_keys(self.prefix, model)
        member = f"{self._process}:{next(self._members)}"
        with self.reaching():
            ticket = int(
                self._join(
                    keys=[line, counter],
                    args=[member, limit, self.heartbeat_prefix(line), self.heartbeat_ms],
                )
            )
        if ticket < 0:
            return None
        made = RedisTicket(self, line, counter, member, ticket)
        self.track(made)
        return made

    def request_stop(self, user_id: str) -> None:
        """Publish a stop for the user to every process of every host."""
        with self.reaching():
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
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=self.ttl)
        self._redis.close()
