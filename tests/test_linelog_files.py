"""The file line log of one host: a chat's next answer reuses the file nobody reads any more,
and never the one a reader still follows."""

import os
import uuid

import orjson

from chatsite.streaming.linelog.files import FileLineStore


def line(seq: int, answer: str) -> bytes:
    return orjson.dumps({"seq": seq, "msg": f"{answer}{seq}"}) + b"\n"


def answer_lines(answer: str, count: int) -> list[bytes]:
    return [line(seq, answer) for seq in range(count)]


def produce(store: FileLineStore, user: str, chat: str, lines: list[bytes]) -> None:
    """A whole answer: written, ended, let go."""
    log = store.create(user, chat)
    log.write(lines, 0)
    log.end()
    log.close()


def read_all(reader) -> list[bytes]:
    try:
        return [each for batch in reader for each in batch]
    finally:
        reader.close()


def answer_file(store: FileLineStore, user: str, chat: str) -> str:
    return store._path(user, chat)


def test_the_next_answer_of_a_chat_reuses_its_file_when_nobody_reads_it(tmp_path):
    store = FileLineStore(tmp_path, None, keep_seconds=60, keep_lines=100)
    user, chat = str(uuid.uuid4()), str(uuid.uuid4())
    produce(store, user, chat, answer_lines("first", 5))
    inode = os.stat(answer_file(store, user, chat)).st_ino
    assert read_all(store.follow(user, chat, 0)) == answer_lines("first", 5)

    produce(store, user, chat, answer_lines("second", 3))
    assert os.stat(answer_file(store, user, chat)).st_ino == inode  # no new inode
    assert read_all(store.follow(user, chat, 0)) == answer_lines("second", 3)
    assert read_all(store.follow(user, chat, 2)) == answer_lines("second", 3)[2:]
    assert not store.generating(user, chat)


def test_a_reader_of_the_previous_answer_keeps_it_whole(tmp_path):
    store = FileLineStore(tmp_path, None, keep_seconds=60, keep_lines=100)
    user, chat = str(uuid.uuid4()), str(uuid.uuid4())
    produce(store, user, chat, answer_lines("first", 5))
    inode = os.stat(answer_file(store, user, chat)).st_ino
    old_reader = store.follow(user, chat, 0)  # holds its marker: it reads the first answer

    second = store.create(user, chat)
    assert os.stat(answer_file(store, user, chat)).st_ino != inode  # a new file, renamed in
    assert second.write(answer_lines("second", 2), 0) == 1  # the old answer's reader
    assert store.generating(user, chat)
    assert read_all(old_reader) == answer_lines("first", 5)
    second.end()
    second.close()
    assert read_all(store.follow(user, chat, 0)) == answer_lines("second", 2)


def test_another_chat_or_user_never_gets_the_file(tmp_path):
    store = FileLineStore(tmp_path, None, keep_seconds=60, keep_lines=100)
    user, chat, other_chat = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    produce(store, user, chat, answer_lines("first", 2))
    produce(store, user, other_chat, answer_lines("other", 1))
    assert read_all(store.follow(user, chat, 0)) == answer_lines("first", 2)
    assert store.follow(str(uuid.uuid4()), chat, 0) is None
