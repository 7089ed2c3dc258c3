"""Which models the chat instances serve and have loaded, with capabilities, cached briefly."""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .client import InstanceClient, InstanceStream
from .errors import InstanceError
from .protocols.base import ChatRequest, CompletionRequest, WireProtocol

log = logging.getLogger(__name__)


@dataclass
class Instance:
    """One configured chat instance and what it was last seen serving."""

    url: str
    max_concurrent: int
    client: InstanceClient
    protocol: WireProtocol
    cool_until: float = 0.0
    reachable: bool = False
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # by model_key
    loaded: set[str] = field(default_factory=set)  # model keys in memory: no load time

    def start(self, request: ChatRequest | CompletionRequest) -> InstanceStream:
        """Send the request in this instance's wire protocol; its answer streams."""
        listed = self.models.get(model_key(request.model))
        model = listed["name"] if listed else request.model  # as this instance names it
        if isinstance(request, ChatRequest):
            prepared = self.protocol.chat(request, model)
        else:
            prepared = self.protocol.completion(request, model)
        return self.client.stream(prepared.path, prepared.body, prepared.decode)

    def cooling(self, now: float | None = None) -> bool:
        """Tell whether the instance is resting after a failure."""
        return (now or time.monotonic()) < self.cool_until

    def cool_down(self, seconds: float) -> None:
        """Skip this instance for `seconds`, after it failed."""
        log.warning("chat instance %s cooling down for %.0f s", self.url, seconds)
        self.cool_until = time.monotonic() + seconds


def model_key(name: str) -> str:
    """What identifies a model across instances: its name less Ollama's implicit `:latest`.

    `echo` and `echo:latest` are one model, on an OpenAI API server listing `echo` and an
    Ollama one listing `echo:latest` alike; any other name stays exactly as it is.
    """
    return name[:-7] if name.endswith(":latest") else name


class ModelCatalog:
    """The union of the instances' models, refreshed at most every `ttl` seconds."""

    def __init__(self, instances: list[Instance], ttl: float, cooldown: float) -> None:
        self.instances = instances
        self.ttl = ttl
        self.cooldown = cooldown
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> None:
        """Ask every instance for its models when the cache is stale.

        Only the first caller refreshes; while it does, others keep using the old list
        (an unreachable instance can take a connect timeout to answer).
        """
        if not force and time.monotonic() - self._fetched_at < self.ttl:
            return
        have_data = self._fetched_at != float("-inf")
        if not self._lock.acquire(blocking=force or not have_data):
            return
        try:
            if not force and time.monotonic() - self._fetched_at < self.ttl:
                return
            if self.instances:
                with ThreadPoolExecutor(max_workers=min(8, len(self.instances))) as executor:
                    list(executor.map(self._refresh_instance, self.instances))
            self._fetched_at = time.monotonic()
        finally:
            self._lock.release()

    def _refresh_instance(self, instance: Instance) -> None:
        try:
            models = {}
            for entry in instance.protocol.models(instance.client):
                models.setdefault(model_key(entry["name"]), entry)
            instance.models = models
            instance.reachable = True
        except Exception as error:
            if isinstance(error, InstanceError):
                log.warning("chat instance %s left out: %s", instance.url, error.detail)
            else:  # a bug here must not take /models, /healthz or other instances down
                log.exception("chat instance %s left out", instance.url)
            instance.models = {}
            instance.loaded = set()
            instance.reachable = False
            instance.cool_down(self.cooldown)
            return
        instance.loaded = self._loaded(instance)

    @staticmethod
    def _loaded(instance: Instance) -> set[str]:
        """The models the instance has in memory; none known if it cannot tell (no /api/ps)."""
        try:
            names = instance.protocol.loaded(instance.client)
        except InstanceError as error:
            log.info("chat instance %s tells no loaded models: %s", instance.url, error.msg)
            return set()
        return {model_key(name) for name in names}

    def models(self) -> list[dict[str, Any]]:
        """List each served model once, as the first instance serving it describes it."""
        self.refresh()
        union: dict[str, dict[str, Any]] = {}
        for instance in self.instances:
            for key, model in instance.models.items():
                union.setdefault(key, model)
        return [union[key] for key in sorted(union)]

    def resolve(self, requested: str) -> str | None:
        """The model's name as the first instance serving it lists it; None if none does."""
        self.refresh()
        key = model_key(requested)
        for instance in self.instances:
            if key in instance.models:
                return instance.models[key]["name"]
        return None

    def reachable(self) -> bool:
        """Tell whether any instance answered the last refresh."""
        self.refresh()
        return any(instance.reachable for instance in self.instances)

    def capabilities(self, model: str) -> set[str] | None:
        """Return the model's capabilities, or None if no instance serves it."""
        self.refresh()
        key = model_key(model)
        for instance in self.instances:
            if key in instance.models:
                return set(instance.models[key]["capabilities"])
        return None

    def instances_for(self, model: str) -> list[Instance]:
        """List the instances that serve the model."""
        self.refresh()
        key = model_key(model)
        return [instance for instance in self.instances if key in instance.models]

    def unsupported_options(self, model: str, options: dict[str, Any]) -> list[str]:
        """The options that some instance serving the model has no way to send."""
        found: dict[str, None] = {}
        for instance in self.instances_for(model):
            found.update(dict.fromkeys(instance.protocol.unsupported_options(options)))
        return list(found)
