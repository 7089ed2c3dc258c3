"""Share the chat instances out: a slot on the least-loaded one, failover, 504."""

import logging
import time
from dataclasses import dataclass
from typing import Any

from ..coordination import Coordinator, Lease
from ..operations.metrics import QueueWait
from .catalog import Instance, ModelCatalog
from .client import InstanceStream
from .errors import (
    InstanceError,
    InstanceFailed,
    InstanceRefused,
    NoInstanceAvailable,
    UnknownModel,
)

log = logging.getLogger(__name__)

WAIT_STEP = 0.25  # re-check for a free slot at least this often while waiting


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
    """Give each request a slot on an instance that serves its model."""

    def __init__(
        self, catalog: ModelCatalog, coordinator: Coordinator, wait_timeout: float, cooldown: float
    ) -> None:
        self.catalog = catalog
        self.coordinator = coordinator
        self.wait_timeout = wait_timeout
        self.cooldown = cooldown

    def _try_slot(self, candidates: list[Instance]) -> Slot | None:
        coordinator = self.coordinator

        def load(instance: Instance) -> float:
            return coordinator.slots_in_use(instance.url) / instance.max_concurrent

        # Counting slots costs a lookup per slot with some coordinators: only to choose.
        ordered = sorted(candidates, key=load) if len(candidates) > 1 else candidates
        for instance in ordered:
            lease = coordinator.try_acquire_slot(instance.url, instance.max_concurrent)
            if lease is not None:
                return Slot(instance, lease)
        return None

    def acquire(self, model: str, deadline: float, exclude: set[str] = frozenset()) -> Slot:
        """Wait until `deadline` for a slot on an instance serving `model`."""
        with QueueWait(model) as wait:  # metrics: chatsite_queue_waiting, _queue_wait_seconds
            slot = self._wait_for_slot(model, deadline, exclude, wait)
        slot.model, slot.waited = model, wait.seconds
        return slot

    def _wait_for_slot(
        self, model: str, deadline: float, exclude: set[str], wait: QueueWait
    ) -> Slot:
        while True:
            now = time.monotonic()
            candidates = [
                i
                for i in self.catalog.instances_for(model)
                if i.url not in exclude and not i.cooling(now)
            ]
            if not candidates:
                raise NoInstanceAvailable()
            slot = self._try_slot(candidates)
            if slot is not None:
                return slot
            if now >= deadline:
                raise NoInstanceAvailable()
            wait.waiting()  # metrics: this request now counts as waiting
            self.coordinator.wait_for_release(min(WAIT_STEP, deadline - now))

    def open_stream(
        self, model: str, path: str, payload: dict[str, Any]
    ) -> tuple[Slot, InstanceStream]:
        """Take a slot and start the upstream stream, trying another instance on failure."""
        deadline = time.monotonic() + self.wait_timeout
        tried: set[str] = set()
        last_error: InstanceError | None = None
        while True:
            try:
                slot = self.acquire(model, deadline, tried)
            except NoInstanceAvailable:
                if last_error is None:
                    raise
                # Every instance said "no such model": the request's fault, not the server's.
                if last_error.status == 404:
                    raise UnknownModel(last_error.msg) from None
                raise InstanceFailed(last_error.msg) from None
            try:
                return slot, slot.instance.client.stream(path, payload)
            except InstanceError as error:
                slot.release()
                log.warning("chat instance %s did not start: %s", slot.instance.url, error.detail)
                if error.status == 404:
                    tried.add(slot.instance.url)  # stale catalog: another may serve it
                elif error.retryable:
                    slot.instance.cool_down(self.cooldown)
                    tried.add(slot.instance.url)
                else:
                    raise InstanceRefused(error.msg) from None
                last_error = error
            except BaseException:
                slot.release()
                raise
