"""Which models the chat instances serve and have loaded, with capabilities, refreshed in the
background."""

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
    refused_key: bool = False  # it answered, refusing chatsite's key (401, 403)
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


# A MODELS_CACHE_SECONDS of 0 must not make the refresher ask the instances without a pause.
MIN_REFRESH_SECONDS = 0.5


class ModelCatalog:
    """The union of the instances' models, fetched in the background every `ttl` seconds.

    A refresher (a daemon thread: a greenlet under gevent) asks every instance as soon as
    the worker starts serving (`start()`, from gunicorn's post_worker_init, or the first
    reader), then every `ttl` seconds. Readers never wait for a refresh: they see what the
    last one found, each instance's part as soon as it answered. Only while no fetch has
    ever ended does a reader wait for the first one, and no longer than `first_wait`
    seconds after it began (the instances' connect time-out: what a down instance costs).
    """

    def __init__(
        self, instances: list[Instance], ttl: float, cooldown: float, first_wait: float = 3.0
    ) -> None:
        self.instances = instances
        self.ttl = ttl
        self.cooldown = cooldown
        self.first_wait = first_wait
        self._fetch_lock = threading.Lock()  # one fetch at a time (a new refresher's too)
        self._start_lock = threading.Lock()
        self._fetched = threading.Event()  # set once the first fetch has ended
        self._first_deadline = float("inf")  # set when the first refresher starts
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def interval(self) -> float:
        """Seconds between the end of one fetch and the start of the next."""
        return max(self.ttl, MIN_REFRESH_SECONDS)

    def start(self) -> None:
        """Start the background refresher, or a new one if it died (logged); idempotent."""
        with self._start_lock:
            refresher = self._refresher
            if self._stop.is_set() or (refresher is not None and refresher.is_alive()):
                return
            if refresher is not None:
                log.warning("the model catalog's refresher is gone; starting a new one")
            if self._first_deadline == float("inf"):
                self._first_deadline = time.monotonic() + self.first_wait
            self._refresher = threading.Thread(
                target=self._refresh_forever, name="chatsite-catalog", daemon=True
            )
            self._refresher.start()

    def close(self) -> None:
        """Stop refreshing (an app done serving), and wait a moment for a fetch under way."""
        self._stop.set()
        refresher = self._refresher
        if refresher is not None and refresher is not threading.current_thread():
            refresher.join(timeout=self.first_wait + 5)

    def ready(self) -> None:
        """Make sure the refresher runs; before the first fetch has ended, wait for it.

        Every reader calls this: it costs two checks once the catalog has been fetched.
        """
        refresher = self._refresher
        if refresher is None or not refresher.is_alive():
            self.start()
        if not self._fetched.is_set() and not self._stop.is_set():
            self._fetched.wait(max(0.0, self._first_deadline - time.monotonic()))

    def _refresh_forever(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.fetch()
                except Exception:  # keep refreshing: the next round may well succeed
                    log.exception("could not refresh the model catalog")
                if self._stop.wait(self.interval):
                    return
        except BaseException:  # killed (a greenlet), or a bug: the next reader starts another
            if not self._stop.is_set():
                log.exception("the model catalog's refresher died")

    def fetch(self) -> None:
        """Ask every instance for its models now; each one's answer is used as it comes."""
        with self._fetch_lock:
            try:
                if self.instances:
                    with ThreadPoolExecutor(max_workers=min(8, len(self.instances))) as executor:
                        list(executor.map(self._refresh_instance, self.instances))
            finally:
                self._fetched.set()

    def _refresh_instance(self, instance: Instance) -> None:
        try:
            models = {}
            for entry in instance.protocol.models(instance.client):
                models.setdefault(model_key(entry["name"]), entry)
            instance.models = models
            instance.reachable, instance.refused_key = True, False
        except Exception as error:
            if isinstance(error, InstanceError):
                log.warning("chat instance %s left out: %s", instance.url, error.detail)
            else:  # a bug here must not take /models, /healthz or other instances down
                log.exception("chat instance %s left out", instance.url)
            instance.models = {}
            instance.loaded = set()
            instance.reachable = False
            instance.refused_key = getattr(error, "status", None) in (401, 403)
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
        self.ready()
        union: dict[str, dict[str, Any]] = {}
        for instance in self.instances:
            for key, model in instance.models.items():
                union.setdefault(key, model)
        return [union[key] for key in sorted(union)]

    def resolve(self, requested: str) -> str | None:
        """The model's name as the first instance serving it lists it; None if none does."""
        self.ready()
        key = model_key(requested)
        for instance in self.instances:
            if key in instance.models:
                return instance.models[key]["name"]
        return None

    def reachable(self) -> bool:
        """Tell whether any instance answered the last refresh."""
        self.ready()
        return any(instance.reachable for instance in self.instances)

    def capabilities(self, model: str) -> set[str] | None:
        """Return the model's capabilities, or None if no instance serves it."""
        self.ready()
        key = model_key(model)
        for instance in self.instances:
            if key in instance.models:
                return set(instance.models[key]["capabilities"])
        return None

    def key_refused(self) -> bool:
        """Tell whether an instance refused chatsite's key at the last refresh."""
        return any(instance.refused_key for instance in self.instances)

    def instances_for(self, model: str) -> list[Instance]:
        """List the instances that serve the model."""
        self.ready()
        key = model_key(model)
        return [instance for instance in self.instances if key in instance.models]

    def unsupported_options(self, model: str, options: dict[str, Any]) -> list[str]:
        """The options that some instance serving the model has no way to send."""
        found: dict[str, None] = {}
        for instance in self.instances_for(model):
            found.update(dict.fromkeys(instance.protocol.unsupported_options(options)))
        return list(found)
