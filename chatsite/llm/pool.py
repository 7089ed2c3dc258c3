"""Share the chat instances out: a fair line per model, then a slot on the best instance.

Requests for a model are served in arrival order: one that finds the model's line empty
and a slot free goes at once; otherwise it joins the line (`QueueFull` past `max_queue`),
and only the head of the line takes a slot. Among instances with a free slot, one that has
the model loaded goes first, then the least loaded; a full one is skipped at once.

While the coordination (Redis) is away or being rebuilt, a request already in line keeps
its place and waits, up to its time-out; a new one fails at once (`CoordinationUnavailable`).
"""

import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from ..coordination import Coordinator, Lease, Ticket
from ..coordination.base import CoordinationUnavailable
from ..operations.metrics import QueueWait
from .catalog import Instance, ModelCatalog, model_key
from .client import InstanceStream
from .errors import (
    InstanceError,
    InstanceFailed,
    InstanceMisconfigured,
    InstanceRefused,
    NoInstanceAvailable,
    QueueFull,
    UnknownModel,
)
from .protocols.base import ChatRequest, CompletionRequest

log = logging.getLogger(__name__)

# A waiter looks at the line at least this often even when nobody wakes it: this is how
# long a waiter of a killed worker (on a crashed Redis host: its heartbeat) holds the line.
WAIT_STEP = 0.5


@dataclass
class Slot:
    """A place on one instance, held for the whole request (tool rounds included)."""

    instance: Instance
    lease: Lease
    model: str = ""
    waited: float = 0.0  # seconds this request waited for the slot

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        self.lease.release()


class InstancePool:
    """Give each request, in its turn, a slot on an instance that serves its model."""

    def __init__(
        self,
        catalog: ModelCatalog,
        coordinator: Coordinator,
        wait_timeout: float,
        cooldown: float,
        max_queue: int,
    ) -> None:
        self.catalog = catalog
        self.coordinator = coordinator
        self.wait_timeout = wait_timeout
        self.cooldown = cooldown
        self.max_queue = max_queue

    def _try_slot(self, model: str, candidates: list[Instance]) -> Slot | None:
        coordinator = self.coordinator

        key = model_key(model)

        def preference(instance: Instance) -> tuple[bool, float]:
            load = coordinator.slots_in_use(instance.url) / instance.max_concurrent
            return key not in instance.loaded, load

        # Counting slots costs a lookup per slot with some coordinators: only to choose.
        ordered = sorted(candidates, key=preference) if len(candidates) > 1 else candidates
        for instance in ordered:
            lease = coordinator.try_acquire_slot(instance.url, instance.max_concurrent)
            if lease is not None:
                return Slot(instance, lease)
        return None

    def admit(self, request: ChatRequest | CompletionRequest) -> "Admission":
        """Start a request's way to an upstream stream (see `Admission`)."""
        return Admission(self, request)


class Admission:
    """One request's way to its upstream stream: its place in line, a slot, the stream.

    Iterate `steps()` to drive it: it yields the request's place in line (1 = next) each time
    it may have changed (and at least every `WAIT_STEP`), and ends with `slot` and `upstream`
    set. Stopping the iteration (closing it) leaves the line; `close()` gives everything back.
    """

    def __init__(self, pool: InstancePool, request: ChatRequest | CompletionRequest) -> None:
        self.pool = pool
        self.model = request.model  # as the catalog names it: its line, metrics and logs
        self.request = request
        self.deadline = time.monotonic() + pool.wait_timeout
        self.ticket: Ticket | None = None
        self.slot: Slot | None = None
        self.upstream: InstanceStream | None = None
        # True when the request no longer wants a slot (stopped, client gone): at the head
        # of the line it then takes none, and its owner ends the wait at the next step.
        self.giving_up: Callable[[], bool] = lambda: False

    def steps(self) -> Generator[int, None, None]:
        """Yield places in line until the upstream stream is open; see the class."""
        try:
            yield from self._open()
        finally:
            self.leave_line()

    def wake(self) -> None:
        """End the current wait at once (a stop request)."""
        if self.ticket is not None:
            self.ticket.wake()

    def leave_line(self) -> None:
        if self.ticket is not None:
            self.ticket.leave()

    def close(self) -> None:
        """Leave the line and give the slot back (idempotent)."""
        self.leave_line()
        if self.slot is not None:
            self.slot.release()

    def _open(self) -> Iterator[int]:
        """Take a slot and start the upstream stream, trying another instance on failure."""
        tried: set[str] = set()
        last_error: InstanceError | None = None
        while True:
            try:
                slot = yield from self._slot(tried)
            except NoInstanceAvailable:
                if last_error is None:
                    raise
                # Every instance said "no such model": the request's fault, not the server's.
                if last_error.status == 404:
                    raise UnknownModel(last_error.msg) from None
                if last_error.status in (401, 403):  # refused chatsite's key: the operator's
                    raise InstanceMisconfigured(last_error.msg) from None
                raise InstanceFailed(last_error.msg) from None
            try:
                self.upstream = slot.instance.start(self.request)
            except InstanceError as error:
                slot.release()
                log.warning("chat instance %s did not start: %s", slot.instance.url, error.detail)
                if error.status == 404:
                    tried.add(slot.instance.url)  # stale catalog: another may serve it
                elif error.retryable:
                    slot.instance.cool_down(self.pool.cooldown)
                    tried.add(slot.instance.url)
                else:
                    raise InstanceRefused(error.msg) from None
                last_error = error
                continue
            except BaseException:
                slot.release()
                raise
            self.slot = slot
            slot.instance.loaded.add(model_key(self.model))  # it is now, whatever /api/ps said
            return

    def _slot(self, tried: set[str]) -> Generator[int, None, Slot]:
        """Wait in line for a slot on an instance serving the model, not in `tried`."""
        with QueueWait(self.model) as wait:  # metrics: chatsite_queue_waiting, _wait_seconds
            slot = yield from self._wait_for_slot(tried, wait)
        slot.model, slot.waited = self.model, wait.seconds
        return slot

    def _wait_for_slot(self, tried: set[str], wait: QueueWait) -> Generator[int, None, Slot]:
        pool, coordinator = self.pool, self.pool.coordinator
        position, away = 0, False
        while True:
            now = time.monotonic()
            candidates = [
                i
                for i in pool.catalog.instances_for(self.model)
                if i.url not in tried and not i.cooling(now)
            ]
            if not candidates:
                raise NoInstanceAvailable()
            if self.ticket is None:
                if not coordinator.waiting(self.model):
                    slot = pool._try_slot(self.model, candidates)
                    if slot is not None:
                        return slot
                self.ticket = coordinator.join_queue(self.model, pool.max_queue)
                if self.ticket is None:
                    raise QueueFull()
            try:
                position = self.ticket.position()
                away = False
                if position == 1 and not self.giving_up():
                    slot = pool._try_slot(self.model, candidates)
                    if slot is not None:
                        return slot
            except CoordinationUnavailable:
                away = True  # keep the place last known, and look again
            if now >= self.deadline:
                raise CoordinationUnavailable() if away else NoInstanceAvailable()
            wait.waiting()  # metrics: this request now counts as waiting
            yield max(position, 1)
            self.ticket.wait(min(WAIT_STEP, self.deadline - time.monotonic()))
