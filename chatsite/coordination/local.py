"""In-process locks, slots and lines: one process only (the dev server, one worker)."""

import itertools
import threading
from collections.abc import Callable

from .base import EventTicket, Lease
from .signals import LocalSignals, ReleaseOnce


class LocalTicket(EventTicket):
    """A place in an in-process line: a number in the model's list."""

    def __init__(self, owner: "LocalCoordinator", model: str, number: int) -> None:
        super().__init__(owner.signals)
        self._owner = owner
        self.model = model
        self.number = number

    def position(self) -> int:
        with self._owner._changed:
            return self._owner._lines[self.model].index(self.number) + 1

    def _leave(self) -> None:
        self._owner._leave(self.model, self.number)


class LocalCoordinator:
    """In-process locks and slots: right for one process (the dev server, one worker)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._users: dict[str, str | None] = {}  # user -> the chat its request writes
        self._slots: dict[str, int] = {}
        self._lines: dict[str, list[int]] = {}
        self._numbers = itertools.count(1)
        self.signals = LocalSignals()

    def try_lock_user(self, user_id: str, chat_id: str | None = None) -> Lease | None:
        with self._changed:
            if user_id in self._users:
                return None
            self._users[user_id] = chat_id
        return ReleaseOnce(lambda: self._unlock_user(user_id))

    def _unlock_user(self, user_id: str) -> None:
        with self._changed:
            self._users.pop(user_id, None)

    def user_busy(self, user_id: str) -> bool:
        return user_id in self._users

    def generating_chat(self, user_id: str) -> str | None:
        return self._users.get(user_id)

    def try_acquire_slot(self, instance: str, capacity: int) -> Lease | None:
        with self._changed:
            if self._slots.get(instance, 0) >= capacity:
                return None
            self._slots[instance] = self._slots.get(instance, 0) + 1
        return ReleaseOnce(lambda: self._release_slot(instance))

    def _release_slot(self, instance: str) -> None:
        with self._changed:
            self._slots[instance] -= 1
        if self.signals.has_waiters():
            self.signals.wake_all()

    def slots_in_use(self, instance: str) -> int:
        return self._slots.get(instance, 0)

    def waiting(self, model: str) -> int:
        return len(self._lines.get(model, ()))

    def join_queue(self, model: str, limit: int) -> LocalTicket | None:
        with self._changed:
            line = self._lines.setdefault(model, [])
            if len(line) >= limit:
                return None
            number = next(self._numbers)
            line.append(number)
        return LocalTicket(self, model, number)

    def _leave(self, model: str, number: int) -> None:
        with self._changed:
            line = self._lines.get(model, [])
            if number in line:
                line.remove(number)
            if not line:
                self._lines.pop(model, None)
        self.signals.wake_all()

    def request_stop(self, user_id: str) -> None:
        self.signals.stop(user_id)

    def watch_stop(self, user_id: str, callback: Callable[[], None]) -> Lease:
        return self.signals.watch_stop(user_id, callback)
