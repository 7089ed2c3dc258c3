"""Which models the chat instances serve and have loaded, with capabilities, refreshed in the
background."""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .client import OllamaClient
from .errors import INVALID_ANSWER, InstanceError

log = logging.getLogger(__name__)


@dataclass
class Instance:
    """One configured chat instance and what it was last seen serving."""

    url: str
    max_concurrent: int
    client: OllamaClient
    cool_until: float = 0.0
    reachable: bool = False
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)  # in memory (/api/ps): no load time

    def cooling(self, now: float | None = None) -> bool:
        """Tell whether the instance is resting after a failure."""
        return (now or time.monotonic()) < self.cool_until

    def cool_down(self, seconds: float) -> None:
        """Skip this instance for `seconds`, after it failed."""
        log.warning("chat instance %s cooling down for %.0f s", self.url, seconds)
        self.cool_until = time.monotonic() + seconds


def normalize_model(name: str) -> str:
    """Give an untagged model name Ollama's implicit `:latest` tag."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parse_instances(value: Any) -> list[tuple[str, int]]:
    """Read CHAT_INSTANCES: a list of URLs or of `{"url", "max_concurrent"}`."""
    if isinstance(value, (str, dict)):
        value = [value]
    parsed = []
    for item in value or []:
        if isinstance(item, str):
            url, capacity = item, 1
        elif isinstance(item, dict) and isinstance(item.get("url"), str):
            url, capacity = item["url"], item.get("max_concurrent", 1)
        else:
            raise ValueError(f"CHATSITE_CHAT_INSTANCES: bad entry {item!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"CHATSITE_CHAT_INSTANCES: {url!r} is not an http(s) URL")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"CHATSITE_CHAT_INSTANCES: bad max_concurrent for {url}")
        parsed.append((url.rstrip("/"), capacity))
    return parsed


# What /api/show may report; other words (from a newer server) are left out.
KNOWN_CAPABILITIES = frozenset({"completion", "tools", "insert", "vision", "thinking", "embedding"})
MAX_MODEL_NAME_CHARS = 200


def nonsense(what: str) -> InstanceError:
    """An answer that is not the Ollama shape: the instance is left out, like one down."""
    return InstanceError(INVALID_ANSWER, retryable=True, detail=what)


def _typed(value: Any, kind: type, default: Any, what: str) -> Any:
    """`value` if of `kind` (bools are no numbers), `default` if absent, else nonsense."""
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise nonsense(f"{what} is not a {kind.__name__}")
    return value


def model_entry(entry: Any) -> dict[str, Any]:
    """Check one model of /api/tags and shape it as /models lists it (capabilities aside)."""
    if not isinstance(entry, dict):
        raise nonsense("tags: a model that is not an object")
    name = _typed(entry.get("name") or entry.get("model"), str, "", "tags: a model name")
    if not 0 < len(name) <= MAX_MODEL_NAME_CHARS or not name.isprintable() or " " in name:
        raise nonsense("tags: a model without a usable name")
    details = _typed(entry.get("details"), dict, {}, "tags: details")
    size = _typed(entry.get("size"), int, 0, "tags: size")
    if size < 0:
        raise nonsense("tags: a negative size")
    return {
        "name": normalize_model(name),
        "family": _typed(details.get("family"), str, "", "tags: family"),
        "parameter_size": _typed(details.get("parameter_size"), str, "", "tags: parameter size"),
        "quantization_level": _typed(
            details.get("quantization_level"), str, "", "tags: quantization level"
        ),
        "size": size,
        "modified_at": _typed(entry.get("modified_at"), str, "", "tags: modified_at"),
        "digest": _typed(entry.get("digest"), str, "", "tags: digest"),
    }


def model_entries(answer: Any) -> list[dict[str, Any]]:
    """Check the answer of /api/tags: `{"models": [model, ...]}`."""
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise nonsense("tags: not an object with a list of models")
    return [model_entry(entry) for entry in models]


def capabilities_in(answer: Any) -> list[str]:
    """Check the answer of /api/show and return the known capabilities it reports."""
    if not isinstance(answer, dict):
        raise nonsense("show: not an object")
    capabilities = answer.get("capabilities")
    if capabilities is None:
        return ["completion"]  # servers older than the field
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise nonsense("show: capabilities is not a list of strings")
    return list(dict.fromkeys(c for c in capabilities if c in KNOWN_CAPABILITIES))


def describe(entry: dict[str, Any], capabilities: list[str]) -> dict[str, Any]:
    """Shape one model as /models lists it."""
    listed = {key: value for key, value in entry.items() if key != "digest"}
    return {**listed, "capabilities": capabilities}


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
        self._capabilities: dict[tuple[str, str, str], list[str]] = {}
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
            for entry in model_entries(instance.client.tags()):
                models[entry["name"]] = describe(entry, self._capabilities_of(instance, entry))
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
            entries = instance.client.running()
        except InstanceError as error:
            log.info("chat instance %s tells no loaded models: %s", instance.url, error.msg)
            return set()
        names = (str(e.get("name") or e.get("model") or "") for e in entries if isinstance(e, dict))
        return {normalize_model(name) for name in names if name}

    def _capabilities_of(self, instance: Instance, entry: dict[str, Any]) -> list[str]:
        key = (instance.url, entry["name"], entry["digest"])
        if key not in self._capabilities:
            answer = instance.client.show(entry["name"])
            self._capabilities[key] = capabilities_in(answer)
        return self._capabilities[key]

    def models(self) -> list[dict[str, Any]]:
        """List each served model once, by name."""
        self.ready()
        union: dict[str, dict[str, Any]] = {}
        for instance in self.instances:
            for name, model in instance.models.items():
                union.setdefault(name, model)
        return [union[name] for name in sorted(union)]

    def reachable(self) -> bool:
        """Tell whether any instance answered the last refresh."""
        self.ready()
        return any(instance.reachable for instance in self.instances)

    def capabilities(self, model: str) -> set[str] | None:
        """Return the model's capabilities, or None if no instance serves it."""
        self.ready()
        for instance in self.instances:
            if model in instance.models:
                return set(instance.models[model]["capabilities"])
        return None

    def instances_for(self, model: str) -> list[Instance]:
        """List the instances that serve the model."""
        self.ready()
        return [instance for instance in self.instances if model in instance.models]
