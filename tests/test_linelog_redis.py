"""The Redis Streams line log: what a reader on another host gets of an answer, live or late.

Two `RedisLineStore`s on one test prefix stand for two hosts: one produces, the other
follows through its own connections.
"""

import contextlib
import threading
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis

from chatsite.streaming.linelog import ProducerLost, RedisLineStore
from chatsite.streaming.linelog.answers import LineLogs
from chatsite.streaming.linelog.redis import answer_keys
from tests.helpers import new_user
from tests.servers import wait_until
from tests.tcp_proxy import TcpProxy

HANG_GUARD = 10  # seconds: a wait that never returns fails the test instead of hanging it


def line(seq: int, **extra) -> bytes:
    return orjson.dumps({"seq": seq, "content": f"w{seq} ", **extra}) + b"\n"


def seqs(lines: list[bytes]) -> list[int]:
    return [orjson.loads(each)["seq"] for each in lines]


def read_all(reader) -> list[bytes]:
    return [each for batch in reader for each in batch]


@pytest.fixture
def raw(redis_prefix):
    """A plain client for looking at (and tampering with) the keys."""
    client = redis.Redis.from_url(redis_prefix[0])
    yield client
    client.close()


@pytest.fixture
def make_store(redis_prefix):
    """Build stores (hosts) on this test's prefix; close them all afterwards."""
    url, prefix = redis_prefix
    made = []

    def make(url: str = url, **settings) -> RedisLineStore:
        made.append(RedisLineStore(url, prefix=prefix, **settings))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def answer():
    """(user id, chat id) of a fresh answer."""
    return new_user(), str(uuid.uuid4())


def test_lines_are_read_from_any_seq_on_another_host(make_store, answer):
    producer, other = make_store(), make_store()
    shared = producer.create(*answer)
    shared.write([line(0), line(1), line(2)], 0)
    shared.write([line(3), line(4)], 3)
    shared.end()
    shared.close()
    assert read_all(other.follow(*answer, 0)) == [line(n) for n in range(5)]
    assert read_all(other.follow(*answer, 3)) == [line(3), line(4)]
    assert read_all(other.follow(*answer, 5)) == []  # from just past the last line: nothing
    assert read_all(other.follow(*answer, 99)) == []


def test_a_reader_follows_live_to_the_last_line(make_store, answer):
    """XREAD BLOCK on the other host's connection wakes for each batch, ends at the end."""
    producer, other = make_store(), make_store()
    shared = producer.create(*answer)
    shared.write([line(0)], 0)
    reader = other.follow(*answer, 0)
    got: list[list[bytes]] = []
    arrived = threading.Event()
    finished = threading.Event()

    def follow() -> None:
        for batch in reader:
            got.append(batch)
            arrived.set()
        finished.set()

    threading.Thread(target=follow, daemon=True).start()
    for first in (1, 3, 5):
        assert arrived.wait(HANG_GUARD)
        arrived.clear()
        assert not finished.is_set()
        shared.write([line(first), line(first + 1)], first)
    shared.write([line(7, done=True)], 7)
    shared.end()
    assert finished.wait(HANG_GUARD)
    assert [each for batch in got for each in batch] == [line(n) for n in range(7)] + [
        line(7, done=True)
    ]
    assert all(batch for batch in got)  # no empty batches
    shared.close()


def test_a_reader_from_a_seq_misses_and_doubles_nothing(make_store, answer):
    """A client resuming from the last seq it saw continues exactly after it."""
    producer, other = make_store(), make_store()
    shared = producer.create(*answer)
    shared.write([line(n) for n in range(4)], 0)
    first_reader = iter(other.follow(*answer, 0))
    seen = next(first_reader)
    assert seqs(seen) == [0, 1, 2, 3]
    shared.write([line(4), line(5)], 4)
    resumed = other.follow(*answer, seqs(seen)[-1] + 1)
    shared.write([line(6)], 6)
    shared.end()
    assert seqs(read_all(resumed)) == [4, 5, 6]
    assert seqs(read_all(first_reader)) == [4, 5, 6]


def test_the_end_is_sent_in_one_round_trip_with_the_lines_missed(make_store, answer, raw):
    """One pipeline per batch; the end mark, the keep time and letting go of the user: one."""
    store = make_store()
    shared = store.create(*answer)
    trips = count_round_trips(store)
    shared.write([line(n) for n in range(50)], 0)
    assert trips() == 1
    shared.end()
    assert trips() == 2
    _, stream, _ = answer_keys(store.prefix, *answer)
    assert raw.xlen(stream) == 51  # the lines and the end mark


def test_an_answers_lines_reach_redis_in_batches_and_all_by_its_end(make_store, answer):
    """The producer's side (`AnswerLog`): lines appended faster than FLUSH_SECONDS go in a
    few pipelines, not one per line; once `end()` returns, another host has every line."""
    producer, other = make_store(), make_store()
    answer_log = LineLogs(producer, producer.keep_seconds, producer.keep_lines).start(*answer)
    trips = count_round_trips(producer)
    for seq in range(200):
        answer_log.append(line(seq))
        answer_log.publish()
    answer_log.append(line(200, done=True))
    answer_log.end()
    assert trips() <= 5  # a batch or two while appending, the rest and the end mark
    assert read_all(other.follow(*answer, 0)) == [line(n) for n in range(200)] + [
        line(200, done=True)
    ]


def test_an_answer_is_unread_only_from_when_its_last_remote_reader_left(make_store, answer):
    """DETACHED_MAX_SECONDS counts from the moment nobody reads, on any host."""
    producer, other = make_store(), make_store()
    answer_log = LineLogs(producer, producer.keep_seconds, producer.keep_lines).start(*answer)
    answer_log.append(line(0))
    answer_log.publish()
    assert wait_until(lambda: answer_log.unread_seconds() > 0.5, timeout=HANG_GUARD)
    unread_before = answer_log.unread_seconds()
    reader = other.follow(*answer, 0)
    assert next(iter(reader)) == [line(0)]
    assert answer_log.unread_seconds() == 0.0  # read on another host
    reader.close()
    assert answer_log.unread_seconds() < unread_before
    answer_log.end()


def count_round_trips(store: RedisLineStore):
    """Count the requests the store's client sends from now (a pipeline is one)."""
    pool = store.client.connection_pool
    sent = []
    original = pool.get_connection

    def counted(*args, **kwargs):
        sent.append(1)
        return original(*args, **kwargs)

    pool.get_connection = counted
    return lambda: len(sent)


def test_maxlen_keeps_the_latest_lines_and_a_late_reader_sees_the_gap(make_store, answer, raw):
    store = make_store(keep_lines=5)
    shared = store.create(*answer)
    for first in range(0, 12, 3):
        shared.write([line(n) for n in range(first, first + 3)], first)
    shared.end()
    _, stream, _ = answer_keys(store.prefix, *answer)
    assert raw.xlen(stream) == 6  # five lines and the end mark
    late = read_all(store.follow(*answer, 2))
    assert seqs(late) == [7, 8, 9, 10, 11]
    assert orjson.loads(late[0])["gap"] is True  # never silently skipped
    assert all("gap" not in orjson.loads(each) for each in late[1:])
    assert read_all(store.follow(*answer, 9)) == [line(9), line(10), line(11)]


def test_a_slow_reader_overtaken_by_maxlen_is_told_of_the_gap(make_store, answer):
    store = make_store(keep_lines=3)
    shared = store.create(*answer)
    shared.write([line(0), line(1)], 0)
    reader = iter(store.follow(*answer, 0))
    assert seqs(next(reader)) == [0, 1]
    shared.write([line(n) for n in range(2, 8)], 2)  # 2..4 trimmed before the reader looks
    shared.end()
    rest = read_all(reader)
    assert seqs(rest) == [5, 6, 7]
    assert orjson.loads(rest[0])["gap"] is True


def test_an_ended_answer_expires_after_the_keep_time(make_store, answer, raw):
    store = make_store(keep_seconds=0.5)
    shared = store.create(*answer)
    shared.write([line(0)], 0)
    answering, stream, _ = answer_keys(store.prefix, *answer)
    assert raw.pttl(stream) > 500  # while it runs: kept beyond the keep time
    shared.end()
    shared.close()
    assert 0 < raw.pttl(stream) <= 500
    assert not raw.exists(answering)
    assert read_all(store.follow(*answer, 0)) == [line(0)]
    assert wait_until(lambda: store.follow(*answer, 0) is None, timeout=HANG_GUARD)
    assert not raw.exists(stream)


def test_generating_follows_the_answer(make_store, answer):
    user, chat = answer
    producer, other = make_store(), make_store()
    assert other.generating_chat(user) is None
    assert other.follow(user, chat, 0) is None  # nothing to resume yet
    shared = producer.create(user, chat)
    assert other.generating(user, chat)
    assert other.generating_chat(user) == chat
    assert not other.generating(user, str(uuid.uuid4()))
    assert other.follow(user, chat, 0) is not None  # before its first line, too
    shared.write([line(0)], 0)
    shared.end()
    assert not other.generating(user, chat)
    assert other.generating_chat(user) is None


def test_another_users_or_an_unknown_chat_finds_nothing(make_store, answer):
    user, chat = answer
    store = make_store()
    shared = store.create(user, chat)
    shared.write([line(0)], 0)
    assert store.follow(new_user(), chat, 0) is None
    assert not store.generating(new_user(), chat)
    assert store.follow(user, str(uuid.uuid4()), 0) is None
    with pytest.raises(ValueError):
        store.follow("../../etc", chat, 0)
    with pytest.raises(ValueError):
        store.follow(user, "not-a-uuid", 0)
    shared.end()


def test_keys_are_namespaced_and_name_no_raw_id(make_store, answer, raw):
    user, chat = answer
    store = make_store()
    shared = store.create(user.upper(), chat.upper())  # other spellings: the same keys
    shared.write([line(0)], 0)
    reader = store.follow(user, chat, 0)
    assert next(iter(reader)) == [line(0)]
    keys = sorted(key.decode() for key in raw.scan_iter(f"{store.prefix}:*"))
    assert keys == sorted(
        [
            f"{store.prefix}:answering:{{{user}}}",
            f"{store.prefix}:answer:{{{user}}}:{chat}",
            f"{store.prefix}:answer:{{{user}}}:{chat}:readers",
        ]
    )
    reader.close()
    shared.end()


def test_a_closed_unended_log_is_lost_to_its_readers_at_once(make_store, answer):
    producer, other = make_store(), make_store()
    shared = producer.create(*answer)
    shared.write([line(0), line(1)], 0)
    reader = iter(other.follow(*answer, 0))
    assert seqs(next(reader)) == [0, 1]
    shared.close()  # the producer failed before its last line
    with pytest.raises(ProducerLost):
        next(reader)
    with pytest.raises(ProducerLost):  # a reader coming later gets the lines, then the loss
        read_all(other.follow(*answer, 0))


def test_a_crashed_hosts_answer_is_lost_within_the_ttl(make_store, answer, raw):
    """A host that dies mid-answer stops renewing: its key lapses, its readers learn it."""
    crashed, survivor = make_store(ttl=0.6), make_store(ttl=0.6)
    shared = crashed.create(*answer)
    shared.write([line(0)], 0)
    reader = iter(survivor.follow(*answer, 0))
    assert next(reader) == [line(0)]
    # A key of the same ttl set later and never renewed: once it is gone, the answer's key
    # has outlived its own ttl, renewed while its host lives.
    marker = f"{crashed.prefix}:marker"
    raw.set(marker, "1", px=crashed.ttl_ms)
    assert wait_until(lambda: not raw.exists(marker), timeout=HANG_GUARD)
    assert survivor.generating(*answer)
    crashed.close()  # no end, no close: as SIGKILL leaves it
    with pytest.raises(ProducerLost):
        next(reader)
    assert not survivor.generating(*answer)


def test_readers_on_other_hosts_are_counted(make_store, answer):
    producer, other = make_store(), make_store()
    shared = producer.create(*answer)
    shared.write([line(0)], 0)
    assert shared.readers() == 0
    first, second = other.follow(*answer, 0), other.follow(*answer, 0)
    assert next(iter(first)) == [line(0)]
    assert next(iter(second)) == [line(0)]
    assert shared.readers() == 2
    assert shared.write([line(1)], 1) == 2  # counted in the write's round trip
    first.close()
    first.close()  # idempotent
    assert shared.readers() == 1
    second.close()
    assert shared.readers() == 0
    shared.end()


def test_a_batch_sent_twice_is_not_doubled(make_store, answer):
    """A batch whose reply was lost is sent again: Redis refuses the ids it has."""
    store = make_store()
    shared = store.create(*answer)
    shared.write([line(0), line(1)], 0)
    shared.write([line(0), line(1)], 0)
    shared.write([line(2)], 2)
    shared.end()
    assert read_all(store.follow(*answer, 0)) == [line(0), line(1), line(2)]


def test_a_batch_redis_missed_is_sent_with_the_next(make_store, answer, redis_prefix):
    """Redis unreachable for a batch: no hole for a reader elsewhere once it is back."""
    with proxied(redis_prefix[0]) as (proxy, via_proxy):
        producer, other = make_store(via_proxy), make_store()
        shared = producer.create(*answer)
        shared.write([line(0)], 0)
        proxy.cut()
        shared.write([line(1), line(2)], 1)  # lost: kept for the next write
        proxy.restore()
        shared.write([line(3)], 3)
        shared.end()
        assert read_all(other.follow(*answer, 0)) == [line(n) for n in range(4)]


def test_a_reader_rides_out_a_short_outage_of_its_redis(make_store, answer, redis_prefix):
    """The reader's connection is cut while it waits: it looks again and misses nothing;
    cut for longer than a lease, it gives up with `ProducerLost` (the client may resume)."""
    producer = make_store(ttl=0.6)
    with proxied(redis_prefix[0]) as (proxy, via_proxy):
        follower = make_store(via_proxy, ttl=0.6)
        shared = producer.create(*answer)
        shared.write([line(0)], 0)
        reader = iter(follower.follow(*answer, 0))
        assert next(reader) == [line(0)]
        proxy.cut()
        shared.write([line(1)], 1)
        proxy.restore()
        assert next(reader) == [line(1)]
        proxy.cut()
        with pytest.raises(ProducerLost):
            next(reader)
        shared.end()


def test_a_redis_restarted_empty_gets_the_answering_key_back(make_store, answer, raw):
    """Redis lost its data: the renewer puts back the key naming the chat, the reader goes
    on, and a reader from 0 is told that the lines before the restart are gone."""
    producer, other = make_store(ttl=0.6), make_store(ttl=0.6)
    shared = producer.create(*answer)
    shared.write([line(0), line(1)], 0)
    reader = iter(other.follow(*answer, 0))
    assert next(reader) == [line(0), line(1)]
    raw.delete(*answer_keys(producer.prefix, *answer))  # as a restart without persistence
    assert wait_until(lambda: other.generating(*answer), timeout=HANG_GUARD)
    shared.write([line(2)], 2)
    assert next(reader) == [line(2)]
    late_reader = other.follow(*answer, 0)
    shared.write([line(3)], 3)
    shared.end()
    late = read_all(late_reader)
    assert seqs(late) == [2, 3]
    assert orjson.loads(late[0])["gap"] is True
    shared.close()


@contextlib.contextmanager
def proxied(url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A TcpProxy in front of the test Redis: (proxy, the url through it)."""
    parts = redis.connection.parse_url(url)
    proxy = TcpProxy(parts.get("host", "127.0.0.1"), parts.get("port", 6379)).start()
    try:
        yield proxy, f"redis://127.0.0.1:{proxy.port}/{parts.get('db', 0)}"
    finally:
        proxy.close()
