"""What a scrape of /metrics shows: this host's metrics, then the chat instances' state."""

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from ..site import Site
from .metrics import PENDING, REGISTRY, multiprocess


class InstanceCollector:
    """`chatsite_instance_up` and `chatsite_instance_slots_in_use`, read at scrape time."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def collect(self) -> Iterator[Metric]:
        catalog, coordinator = self.site.catalog, self.site.coordinator
        catalog.refresh()  # only when stale, and never blocks while another refresh runs
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


class _Scrape:
    """What one scrape shows: this host's chatsite metrics, then the instances."""

    def __init__(self, site: Site) -> None:
        self.sources: list = [InstanceCollector(site)]
        if multiprocess():
            merged = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(merged)
            self.sources.insert(0, merged)
        else:
            self.sources.insert(0, REGISTRY)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


def scrape(site: Site) -> bytes:
    """Render every metric in Prometheus' text format (this process's changes written first)."""
    PENDING.flush()
    return generate_latest(_Scrape(site))  # type: ignore[arg-type]
