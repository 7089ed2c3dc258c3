"""Prometheus metrics for the whole host, summed over gunicorn's workers at scrape time.

Under gunicorn, `gunicorn.conf.py` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before
any worker starts: every worker then keeps its values in small memory-mapped files there, and
a scrape (whichever worker answers it) merges them: counters and histograms summed, gauges
summed over the workers still alive ("livesum"). Without the variable (the Flask dev server,
tests in one process) the values live in this process.

Nothing here runs per streamed chunk: a stream counts its chunks itself and adds them once,
when it ends. Counter and gauge changes are batched in the process (`Pending`) and written
to the shared values once a second. Instance state (slots in use, up or down) is read at
scrape time from the catalog and the coordinator, which already span the host (files) or
the cluster (Redis). A scrape also gives every model of the catalog its series (`PER_MODEL`)
from the start, at 0, and drops those of models that left it (see `scrape`).
"""

import atexit
import logging
import os
import threading
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from . import requestlog

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `*_created` samples cannot be merged across workers; none is exported in either mode.
disable_created_metrics()

# chatsite's own metrics only: the default registry's process_* metrics describe one worker.
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "chatsite_requests_total",
    "HTTP requests answered, by endpoint (the route's path) and status code.",
    ["endpoint", "code"],
    registry=REGISTRY,
)
STREAMS_ACTIVE = Gauge(
    "chatsite_streams_active",
    "Streamed answers (/chat, /generate) relaying right now.",
    ["model"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
QUEUE_WAITING = Gauge(
    "chatsite_queue_waiting",
    "Requests waiting for a free instance slot right now.",
    ["model"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
STREAM_CHUNKS = Counter(
    "chatsite_stream_chunks_total",
    "Pieces of text relayed to clients (about one per token), of the reply or its thinking.",
    ["model", "kind"],
    registry=REGISTRY,
)
CHUNK_KINDS = ("thinking", "content")
FIRST_CHUNK_SECONDS = Histogram(
    "chatsite_first_chunk_seconds",
    "From the request's arrival to the first line of its stream.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    "chatsite_queue_wait_seconds",
    "Time a request waited for an instance slot (0 when one was free).",
    buckets=(0.005, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
STREAM_SECONDS = Histogram(
    "chatsite_stream_seconds",
    "How long a stream relayed, from its start to its end (done, error or client gone).",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900),
    registry=REGISTRY,
)


# The families labelled by model, and the other labels each model's series carry: a scrape
# shows each of them for every model in the catalog, 0 until something happens.
PER_MODEL: dict[str, tuple[dict[str, str], ...]] = {
    "chatsite_streams_active": ({},),
    "chatsite_queue_waiting": ({},),
    "chatsite_stream_chunks": tuple({"kind": kind} for kind in CHUNK_KINDS),
}

FLUSH_SECONDS = 1.0


class Pending:
    """Counter and gauge changes kept in this process, added to the shared values in batches.

    In multiprocess mode every change of a shared value is a locked write to a memory-mapped
    file: some 15 us on a busy worker, and a request or a stream makes several. Kept here, a
    change is a dict update; a background thread (a greenlet under gevent) adds them up once
    a second, as does a scrape (for its own process) and the process's exit. /metrics lags
    by a second at most; a gauge that goes up and down within one batch writes nothing.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child starts with nothing

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._changes: dict = {}
        self._flusher: threading.Thread | None = None

    def add(self, child: Counter | Gauge, amount: float) -> None:
        """Add `amount` to a counter or gauge (with its labels) at the next flush."""
        with self._lock:
            self._changes[child] = self._changes.get(child, 0) + amount
        if self._flusher is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(
                target=self._flush_forever, name="chatsite-metrics", daemon=True
            )
        self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # keep flushing: one bad write must not stop the metrics
                log.exception("could not write the metrics")

    def flush(self) -> None:
        """Write the changes kept so far to the shared values."""
        with self._lock:
            changes, self._changes = self._changes, {}
        for child, amount in changes.items():
            if amount:
                child.inc(amount)


PENDING = Pending()
atexit.register(PENDING.flush)
_children: dict[tuple, Counter | Gauge] = {}


def labelled(metric: Counter | Gauge, *labels: str) -> Counter | Gauge:
    """The metric's child for these labels, kept: `labels()` takes a lock and builds keys."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def multiprocess() -> bool:
    """Tell whether the values are shared through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(MULTIPROC_ENV))


def count_request(endpoint: str, code: int) -> None:
    """Count one answered request."""
    PENDING.add(labelled(REQUESTS, endpoint, str(code)), 1)


class QueueWait:
    """Time one wait for a slot; count the request as waiting only while it really waits."""

    __slots__ = ("_model", "_started", "_waiting", "seconds")

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = time.monotonic()
        self._waiting = False
        self.seconds = 0.0

    def __enter__(self) -> "QueueWait":
        return self

    def waiting(self) -> None:
        """Called before each sleep for a slot: the first one makes the request count."""
        if not self._waiting:
            self._waiting = True
            PENDING.add(labelled(QUEUE_WAITING, self._model), 1)

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.monotonic() - self._started if self._waiting else 0.0
        if self._waiting:
            PENDING.add(labelled(QUEUE_WAITING, self._model), -1)
        QUEUE_WAIT_SECONDS.observe(self.seconds)


class StreamWatch:
    """One streamed request's figures: relaying while it has a slot, first-line time,
    chunks and length, and its log line.

    Created by the reply in the view (so the request's record is at hand); `relaying()` when
    it has its slot and upstream stream; `finished()` once, however it ends (a request that
    never reached an instance, waiting in its stream, is logged but never relayed).
    """

    __slots__ = ("_done", "_first_seen", "_model", "_record", "_relaying_since", "_started")

    def __init__(self, model: str) -> None:
        self._model = model
        self._record = requestlog.current()
        self._started = time.monotonic()
        self._relaying_since: float | None = None
        self._first_seen = False
        self._done = False
        if self._record is not None:
            self._record.streaming = True  # its line is written when the stream ends

    def relaying(self, instance: str, waited: float) -> None:
        """The request has its slot on `instance` (after `waited` s): it relays from now on."""
        self._relaying_since = time.monotonic()
        PENDING.add(labelled(STREAMS_ACTIVE, self._model), 1)
        if self._record is not None:
            self._record.note_slot(self._model, instance, waited)

    def first_line(self) -> None:
        """The answer's first line is about to be sent."""
        if not self._first_seen:
            self._first_seen = True
            since = self._record.started if self._record is not None else self._started
            FIRST_CHUNK_SECONDS.observe(time.monotonic() - since)

    def finished(self, chunks: int, complete: bool, thinking: int = 0) -> None:
        """The stream ended: add its chunks (of the reply, and of its thinking), time it, and
        log its request (once)."""
        if self._done:
            return
        self._done = True
        if self._relaying_since is not None:
            PENDING.add(labelled(STREAMS_ACTIVE, self._model), -1)
            if chunks:
                PENDING.add(labelled(STREAM_CHUNKS, self._model, "content"), chunks)
            if thinking:
                PENDING.add(labelled(STREAM_CHUNKS, self._model, "thinking"), thinking)
            STREAM_SECONDS.observe(time.monotonic() - self._relaying_since)
        if self._record is not None:
            self._record.stream_ended(chunks, complete)
