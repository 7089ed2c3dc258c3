"""The Coordinator implementations: shared behaviour, flock across processes, Redis TTLs."""

import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import uuid

import gevent
import pytest
import redis

from chatsite.coordination import FileCoordinator, LocalCoordinator, RedisCoordinator, instance_key
from chatsite.coordination.base import CoordinationUnavailable
from tests.helpers import new_user
from tests.servers import ROOT, wait_until

URL = "http://chat-1.internal:8000/v1"
OTHER_URL = "http://chat-2.internal:8000/v1"
HANG_GUARD = 10  # seconds: a wait that never returns fails the test instead of hanging it


@pytest.fixture
def raw(redis_prefix):
    """A plain client for looking at (and tampering with) the keys."""
    url, _ = redis_prefix
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture
def make_redis(redis_prefix):
    """Build RedisCoordinators on this test's prefix; close them all afterwards."""
    url, prefix = redis_prefix
    made = []

    def make(ttl: float = 15.0) -> RedisCoordinator:
        made.append(RedisCoordinator(url, prefix=prefix, ttl=ttl))
        return made[-1]

    yield make
    for coordinator in made:
        coordinator.close()


@pytest.fixture(params=["local", "files", "redis"])
def coordinator(request, tmp_path):
    if request.param == "local":
        return LocalCoordinator()
    if request.param == "files":
        return FileCoordinator(str(tmp_path / "locks"))
    return request.getfixturevalue("make_redis")()


# -- shared behaviour --


def test_user_lock_is_exclusive_and_retakeable(coordinator):
    user = new_user()
    lease = coordinator.try_lock_user(user)
    assert lease is not None
    assert coordinator.try_lock_user(user) is None
    other = coordinator.try_lock_user(new_user())
    assert other is not None
    lease.release()
    again = coordinator.try_lock_user(user)
    assert again is not None
    again.release()
    other.release()


def test_release_is_idempotent_and_spares_the_next_holder(coordinator):
    user = new_user()
    first = coordinator.try_lock_user(user)
    first.release()
    first.release()
    second = coordinator.try_lock_user(user)
    assert second is not None
    first.release()
    assert coordinator.try_lock_user(user) is None
    second.release()

    slot = coordinator.try_acquire_slot(URL, 1)
    slot.release()
    next_slot = coordinator.try_acquire_slot(URL, 1)
    assert next_slot is not None
    slot.release()
    assert coordinator.try_acquire_slot(URL, 1) is None
    assert coordinator.slots_in_use(URL) == 1
    next_slot.release()
    assert coordinator.slots_in_use(URL) == 0


def test_capacity_is_respected(coordinator):
    first = coordinator.try_acquire_slot(URL, 2)
    second = coordinator.try_acquire_slot(URL, 2)
    assert first is not None and second is not None
    assert coordinator.try_acquire_slot(URL, 2) is None
    elsewhere = coordinator.try_acquire_slot(OTHER_URL, 2)
    assert elsewhere is not None
    first.release()
    third = coordinator.try_acquire_slot(URL, 2)
    assert third is not None
    assert coordinator.try_acquire_slot(URL, 2) is None
    for lease in (second, third, elsewhere):
        lease.release()
    assert coordinator.try_acquire_slot(URL, 0) is None


def test_slots_in_use_counts(coordinator):
    assert coordinator.slots_in_use(URL) == 0
    leases = []
    for expected in (1, 2, 3):
        leases.append(coordinator.try_acquire_slot(URL, 3))
        assert coordinator.slots_in_use(URL) == expected
    assert coordinator.slots_in_use(OTHER_URL) == 0
    for expected, lease in zip((2, 1, 0), leases, strict=True):
        lease.release()
        assert coordinator.slots_in_use(URL) == expected


def test_racing_threads_get_exactly_capacity(coordinator):
    start = threading.Barrier(12)
    got = []

    def take() -> None:
        start.wait()
        got.append(coordinator.try_acquire_slot(URL, 4))

    threads = [threading.Thread(target=take) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [lease for lease in got if lease is not None]
    assert len(held) == 4
    assert coordinator.slots_in_use(URL) == 4
    for lease in held:
        lease.release()


# -- the lines and stop requests --


def test_the_line_is_first_come_first_served(coordinator):
    tickets = [coordinator.join_queue("echo:latest", 3) for _ in range(3)]
    assert [t.position() for t in tickets] == [1, 2, 3]
    assert coordinator.waiting("echo:latest") == 3
    assert coordinator.join_queue("echo:latest", 3) is None  # full
    other = coordinator.join_queue("coder:latest", 3)  # every model has its own line
    assert other.position() == 1
    tickets[1].leave()
    tickets[1].leave()  # idempotent
    assert [tickets[0].position(), tickets[2].position()] == [1, 2]
    tickets[0].leave()
    assert tickets[2].position() == 1
    for ticket in (tickets[2], other):
        ticket.leave()
    assert coordinator.waiting("echo:latest") == 0


def test_leaving_and_releasing_wake_the_waiters(coordinator):
    """A wait of 30 s ends when the one ahead leaves, and again when a slot is freed."""
    first, second = (coordinator.join_queue("echo:latest", 10) for _ in range(2))
    held = coordinator.try_acquire_slot(URL, 1)
    for wake in (first.leave, held.release):
        waiter = threading.Thread(target=second.wait, args=(30,))
        waiter.start()
        wake()
        waiter.join(HANG_GUARD)
        assert not waiter.is_alive()
    second.leave()


def test_stop_reaches_the_request_that_watches(coordinator):
    user, other = new_user(), new_user()
    stopped: list[str] = []
    watch = coordinator.watch_stop(user, lambda: stopped.append(user))
    coordinator.watch_stop(other, lambda: stopped.append(other))
    coordinator.request_stop(user)
    assert wait_until(lambda: stopped == [user])
    watch.release()
    coordinator.request_stop(user)  # nobody watches any more: nothing happens
    coordinator.request_stop(other)  # delivered in order: after the one before
    assert wait_until(lambda: stopped == [user, other])


def test_user_busy_follows_the_lock(coordinator):
    user = new_user()
    assert not coordinator.user_busy(user)
    lease = coordinator.try_lock_user(user)
    assert coordinator.user_busy(user)
    lease.release()
    assert not coordinator.user_busy(user)


WAITER = textwrap.dedent(
    """
    import sys, time
    from chatsite.coordination import FileCoordinator, RedisCoordinator
    kind, where, prefix = sys.argv[1:4]
    if kind == "files":
        coordinator = FileCoordinator(where)
    else:
        coordinator = RedisCoordinator(where, prefix=prefix)
    ticket = coordinator.join_queue("echo:latest", 10)
    print(ticket.position(), flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("kind", ["files", "redis"])
def test_a_killed_waiter_leaves_no_ghost(kind, tmp_path, request):
    if kind == "files":
        where, prefix = str(tmp_path / "locks"), ""
        coordinator = FileCoordinator(where)
    else:
        where, prefix = request.getfixturevalue("redis_prefix")
        coordinator = request.getfixturevalue("make_redis")()
    child = subprocess.Popen(
        [sys.executable, "-c", WAITER, kind, where, prefix],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "1"
        mine = coordinator.join_queue("echo:latest", 10)
        assert mine.position() == 2
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=5)
        assert wait_until(lambda: mine.position() == 1, timeout=10)
        mine.leave()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


# -- FileCoordinator --


def test_file_layout_and_permissions(tmp_path):
    coordinator = FileCoordinator(str(tmp_path / "locks"))
    user = new_user()
    lease = coordinator.try_lock_user(user)
    slot = coordinator.try_acquire_slot(URL, 1)
    locks = tmp_path / "locks"
    for folder in (locks, locks / "users", locks / "slots"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for file in (locks / "users" / f"{user}.lock", locks / "slots" / f"{instance_key(URL)}.0.lock"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert not os.get_inheritable(lease._fd)  # O_CLOEXEC: no leak into spawned programs
    lease.release()
    slot.release()


def test_bad_user_ids_are_rejected(tmp_path):
    coordinator = FileCoordinator(str(tmp_path / "locks"))
    for bad in ["", "../../etc/passwd", "not-a-uuid", "x" * 36, "/tmp/x", None, 42]:
        with pytest.raises(ValueError):
            coordinator.try_lock_user(bad)
    assert list((tmp_path / "locks" / "users").iterdir()) == []


def test_other_spellings_of_a_uuid_share_the_lock(tmp_path):
    coordinator = FileCoordinator(str(tmp_path / "locks"))
    user = uuid.uuid4()
    lease = coordinator.try_lock_user(str(user))
    assert coordinator.try_lock_user(str(user).upper()) is None
    assert coordinator.try_lock_user(user.hex) is None
    lease.release()


def test_two_opens_in_one_process_exclude_each_other(tmp_path):
    """flock belongs to the open file description: workers and greenlets alike conflict."""
    first = FileCoordinator(str(tmp_path / "locks"))
    second = FileCoordinator(str(tmp_path / "locks"))
    user = new_user()
    lease = first.try_lock_user(user)
    assert second.try_lock_user(user) is None
    slot = first.try_acquire_slot(URL, 1)
    assert second.try_acquire_slot(URL, 1) is None
    assert second.slots_in_use(URL) == 1  # never acquired here: counts the existing files
    lease.release()
    slot.release()
    assert second.try_lock_user(user) is not None


def test_greenlets_exclude_each_other(tmp_path):
    coordinator = FileCoordinator(str(tmp_path / "locks"))
    user = new_user()
    seen = []
    taken, tried = gevent.event.Event(), gevent.event.Event()

    def holder() -> None:
        lease = coordinator.try_lock_user(user)
        seen.append(lease is not None)
        taken.set()
        tried.wait()
        lease.release()

    def contender() -> None:
        taken.wait()
        seen.append(coordinator.try_lock_user(user))
        tried.set()

    gevent.joinall([gevent.spawn(holder), gevent.spawn(contender)], raise_error=True)
    assert seen == [True, None]


CHILD = textwrap.dedent(
    """
    import sys, time
    from chatsite.coordination import FileCoordinator
    coordinator = FileCoordinator(sys.argv[1])
    print(coordinator.try_lock_user(sys.argv[2]) is None, flush=True)
    user = coordinator.try_lock_user(sys.argv[3])
    slot = coordinator.try_acquire_slot(sys.argv[4], 1)
    print(user is not None and slot is not None, flush=True)
    time.sleep(60)
    """
)


def test_file_locks_span_processes_and_die_with_the_holder(tmp_path):
    locks = str(tmp_path / "locks")
    coordinator = FileCoordinator(locks)
    mine, theirs = new_user(), new_user()
    held = coordinator.try_lock_user(mine)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, locks, mine, theirs, URL],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "True"  # the child saw our lock
        assert child.stdout.readline().strip() == "True"  # and took its own
        assert coordinator.try_lock_user(theirs) is None
        assert coordinator.try_acquire_slot(URL, 1) is None
        assert coordinator.slots_in_use(URL) == 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=5)
        lease = coordinator.try_lock_user(theirs)
        assert lease is not None
        assert coordinator.slots_in_use(URL) == 0
        assert coordinator.try_acquire_slot(URL, 1) is not None
        lease.release()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        held.release()


# -- RedisCoordinator --


def test_redis_away_is_coordination_unavailable():
    coordinator = RedisCoordinator("redis://127.0.0.1:1/0", prefix="chatsite-test-down")
    with pytest.raises(CoordinationUnavailable) as raised:
        coordinator.try_lock_user(new_user())
    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    with pytest.raises(CoordinationUnavailable):
        coordinator.try_acquire_slot(URL, 2)
    with pytest.raises(CoordinationUnavailable):
        coordinator.join_queue("echo:latest", 10)
    coordinator.close()


def test_redis_keys_are_namespaced(make_redis, raw, redis_prefix):
    _, prefix = redis_prefix
    coordinator = make_redis()
    user = new_user()
    lease = coordinator.try_lock_user(user)
    slot = coordinator.try_acquire_slot(URL, 2)
    keys = {key.decode() for key in raw.scan_iter(match=f"{prefix}:*")}
    assert f"{prefix}:user:{user}" in keys
    assert any(key.startswith(f"{prefix}:slot:") for key in keys)
    assert 0 < raw.pttl(f"{prefix}:user:{user}") <= 15000
    with pytest.raises(ValueError):
        coordinator.try_lock_user("../not-a-uuid")
    assert make_redis().slots_in_use(URL) == 1  # a worker that never acquired still counts
    lease.release()
    slot.release()
    assert not raw.exists(f"{prefix}:user:{user}")


def test_redis_release_spares_a_stolen_key(make_redis, raw):
    coordinator = make_redis()
    user = new_user()
    lease = coordinator.try_lock_user(user)
    raw.set(lease.key, "someone-else")  # as if it expired and another host took it
    lease.release()
    assert raw.get(lease.key) == b"someone-else"

    slot = coordinator.try_acquire_slot(URL, 1)
    raw.set(slot.key, "someone-else")
    slot.release()
    assert raw.get(slot.key) == b"someone-else"


def test_redis_lost_lease_is_reported(make_redis, raw, caplog):
    coordinator = make_redis(ttl=0.3)
    lease = coordinator.try_lock_user(new_user())
    raw.set(lease.key, "someone-else")
    with caplog.at_level(logging.WARNING, logger="chatsite.coordination.redis"):
        assert wait_until(lambda: any("lost" in r.getMessage() for r in caplog.records))
    lease.release()
    assert raw.get(lease.key) == b"someone-else"


def test_redis_renewal_keeps_a_lease_alive(make_redis, raw):
    coordinator = make_redis(ttl=0.5)
    user = new_user()
    lease = coordinator.try_lock_user(user)
    slot = coordinator.try_acquire_slot(URL, 1)
    # A lease of the same ttl taken later and never renewed: once it is gone, ours has
    # outlived its own ttl.
    unrenewed = make_redis(ttl=0.5)
    marker = unrenewed.try_lock_user(new_user())
    unrenewed.close()
    assert wait_until(lambda: not raw.exists(marker.key))
    assert raw.get(lease.key) == lease.token.encode()
    assert raw.get(slot.key) == slot.token.encode()
    assert coordinator.try_lock_user(user) is None
    assert coordinator.try_acquire_slot(URL, 1) is None
    lease.release()
    slot.release()
    assert not raw.exists(lease.key, slot.key)


def test_redis_leases_of_a_crashed_host_expire(make_redis, raw):
    crashed = make_redis(ttl=0.5)
    user = new_user()
    lease = crashed.try_lock_user(user)
    slot = crashed.try_acquire_slot(URL, 1)
    crashed.close()  # the renewer stops; nothing is released
    with pytest.raises(RuntimeError):
        crashed.try_lock_user(new_user())
    assert 0 < raw.pttl(lease.key) <= 500
    survivor = make_redis(ttl=0.5)
    assert survivor.try_lock_user(user) is None
    assert wait_until(lambda: not raw.exists(lease.key, slot.key))
    assert survivor.try_lock_user(user) is not None
    assert survivor.try_acquire_slot(URL, 1) is not None


def test_file_slots_reuse_what_this_process_released(tmp_path):
    """A released slot is tried first: no new slot files while load stays the same."""
    coordinator = FileCoordinator(tmp_path)
    for _ in range(50):
        lease = coordinator.try_acquire_slot("http://gpu:11434", 5000)
        assert lease is not None
        lease.release()
    assert len(list((tmp_path / "slots").iterdir())) == 1


def test_a_new_process_takes_the_slot_files_that_exist_before_making_new_ones(tmp_path):
    """After a restart, slots come from the files earlier processes made, held ones skipped."""
    earlier = FileCoordinator(tmp_path)
    held = [earlier.try_acquire_slot("http://gpu:11434", 5000) for _ in range(3)]
    existing = set((tmp_path / "slots").iterdir())
    held.pop().release()
    held.pop().release()  # two files free, one still held by the earlier process

    restarted = FileCoordinator(tmp_path)
    taken = [restarted.try_acquire_slot("http://gpu:11434", 5000) for _ in range(2)]
    assert all(taken)
    assert set((tmp_path / "slots").iterdir()) == existing  # no new file for those two
    assert restarted.try_acquire_slot("http://gpu:11434", 5000) is not None
    assert len(list((tmp_path / "slots").iterdir())) == 4  # all three busy: a new one


def test_redis_that_lost_its_data_gets_back_what_each_worker_holds(make_redis, raw, redis_prefix):
    """Redis restarted without persistence: the workers put back their leases and waiters,
    and nothing new is handed out before they have (the restart itself, over gunicorn, is
    in test_queue.py)."""
    _, prefix = redis_prefix
    holder, other = make_redis(), make_redis()
    user = new_user()
    lock = holder.try_lock_user(user)
    slot = holder.try_acquire_slot(URL, 1)
    first = other.join_queue("echo:latest", 10)
    second = holder.join_queue("echo:latest", 10)
    assert (first.position(), second.position()) == (1, 2)

    raw.delete(*raw.scan_iter(f"{prefix}:*"))  # all a restart without persistence leaves
    assert holder.check_epoch() > 0  # it knew the epoch: a recovery starts, its own put back
    assert raw.get(lock.key) == lock.token.encode()
    assert raw.get(slot.key) == slot.token.encode()
    newcomer = make_redis()  # a worker that never saw Redis before
    for hand_out in (
        lambda: newcomer.try_lock_user(new_user()),
        lambda: newcomer.try_acquire_slot(URL, 1),
        lambda: newcomer.join_queue("echo:latest", 10),
    ):
        with pytest.raises(CoordinationUnavailable):
            hand_out()
    with pytest.raises(CoordinationUnavailable):
        second.position()
    # Waiting, as the waiters of a worker do: each looks at its place (its heartbeat), which
    # is not told until the recovery is over (a count taken meanwhile may be short).

    def recovered():
        with contextlib.suppress(CoordinationUnavailable):
            return first.position() == 1 and second.position() == 2
        return False

    assert wait_until(recovered, timeout=HANG_GUARD)
    assert newcomer.check_epoch() == 0
    assert newcomer.try_lock_user(user) is None
    assert newcomer.try_acquire_slot(URL, 1) is None
    third = newcomer.join_queue("echo:latest", 10)
    assert third.position() == 3  # behind those who waited before the restart
    slot.release()
    first.leave()
    assert second.position() == 1
    second.leave()
    third.leave()
    lock.release()
    assert newcomer.try_lock_user(user) is not None


def test_the_generating_chat_lives_with_the_users_lock(coordinator):
    """The chat a /chat writes is known wherever its lock is, and goes with the lock."""
    user, other, chat = new_user(), new_user(), str(uuid.uuid4())
    assert coordinator.generating_chat(user) is None
    lease = coordinator.try_lock_user(user, chat)
    assert coordinator.generating_chat(user) == chat
    assert coordinator.generating_chat(other) is None
    assert coordinator.try_lock_user(user) is None  # a second request changes nothing
    assert coordinator.generating_chat(user) == chat
    lease.release()
    assert coordinator.generating_chat(user) is None
    plain = coordinator.try_lock_user(user)  # a /generate, or a /chat with no chatfile
    assert coordinator.user_busy(user) and coordinator.generating_chat(user) is None
    plain.release()


def test_another_process_sees_the_generating_chat_and_not_a_killed_ones(tmp_path):
    locks = str(tmp_path / "locks")
    user, chat = new_user(), str(uuid.uuid4())
    child = subprocess.Popen(
        [sys.executable, "-c", GENERATING_CHILD, locks, user, chat],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    coordinator = FileCoordinator(locks)
    try:
        assert child.stdout.readline().strip() == "held"
        assert coordinator.generating_chat(user) == chat
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=5)
        assert coordinator.generating_chat(user) is None  # its note stays, its lock does not
        lease = coordinator.try_lock_user(user)
        assert coordinator.generating_chat(user) is None  # the next holder writes anew
        lease.release()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


GENERATING_CHILD = textwrap.dedent(
    """
    import sys, time
    from chatsite.coordination import FileCoordinator
    lease = FileCoordinator(sys.argv[1]).try_lock_user(sys.argv[2], sys.argv[3])
    print("held", flush=True)
    time.sleep(60)
    """
)
