"""What a scrape of /metrics shows: this host's metrics, then the chat instances' state.

Every series an operator may graph or alert on exists from the first scrape: each model of
the catalog has its per-model series (0 until something happens), each configured instance
its own; a model that left the catalog loses its series (a gauge still above 0 stays until
it is back to 0, so nothing in progress is hidden).
"""

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from ..site import Site
from .metrics import PENDING, PER_MODEL, REGISTRY, multiprocess


class InstanceCollector:
    """`chatsite_instance_up` and `chatsite_instance_slots_in_use`, read at scrape time."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def collect(self) -> Iterator[Metric]:
        catalog, coordinator = self.site.catalog, self.site.coordinator
        catalog.ready()  # waits only for a worker's very first fetch
        up = GaugeMetricFamily(
            "chatsite_instance_up",
            "1 if the chat instance answered its last check and is not cooling down, else 0.",
            labels=["instance"],
        )
        slots = GaugeMetricFamily(
            "chatsite_instance_slots_in_use",
            "Slots of the chat instance in use, as the coordinator counts them.",
            labels=["instance"],
        )
        now = time.monotonic()
        for instance in catalog.instances:
            up.add_metric([instance.url], int(instance.reachable and not instance.cooling(now)))
            slots.add_metric([instance.url], coordinator.slots_in_use(instance.url))
        yield up
        yield slots


def label_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def for_catalog(family: Metric, models: list[str], extra: tuple[dict[str, str], ...]) -> Metric:
    """The family's series for exactly the catalog's `models`, each with `extra` labels.

    A missing series is added at 0; a model that left the catalog loses its series, unless a
    gauge of it is still above 0 (a stream of it still relaying).
    """
    known = set(models)
    kept = [
        sample
        for sample in family.samples
        if sample.labels.get("model") in known or (family.type == "gauge" and sample.value)
    ]
    present = {label_key(sample.labels) for sample in kept}
    name = family.name + ("_total" if family.type == "counter" else "")
    for model in models:
        for others in extra:
            labels = {"model": model, **others}
            if label_key(labels) not in present:
                kept.append(Sample(name, labels, 0.0))
    family.samples = sorted(kept, key=lambda sample: label_key(sample.labels))
    return family


class _Scrape:
    """What one scrape shows: this host's chatsite metrics, then the instances."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.instances = InstanceCollector(site)
        if multiprocess():
            self.own = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.own)
        else:
            self.own = REGISTRY

    def collect(self) -> Iterator[Metric]:
        models = [model["name"] for model in self.site.catalog.models()]  # waits as `ready()`
        missing = dict(PER_MODEL)
        for family in self.own.collect():
            extra = missing.pop(family.name, None)
            yield family if extra is None else for_catalog(family, models, extra)
        # A family no process has a value of yet is not in the merged files at all.
        for family in REGISTRY.collect():
            if family.name in missing:
                empty = Metric(family.name, family.documentation, family.type)
                yield for_catalog(empty, models, missing[family.name])
        yield from self.instances.collect()


def scrape(site: Site) -> bytes:
    """Render every metric in Prometheus' text format (this process's changes written first)."""
    PENDING.flush()
    return generate_latest(_Scrape(site))  # type: ignore[arg-type]
