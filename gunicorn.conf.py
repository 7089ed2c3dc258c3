"""gunicorn settings for chatsite: gevent workers holding many long streams.

`make serve` uses it; so does deploy/chatsite.service. Every value can be overridden on the
command line or with GUNICORN_CMD_ARGS.
"""

import glob
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import tempfile

bind = os.environ.get("CHATSITE_BIND", "127.0.0.1:8000")
# The gevent worker patches the standard library (monkey.patch_all) before it imports
# the app, so every socket, lock and sleep in chatsite cooperates.
worker_class = "gevent"
workers = int(os.environ.get("CHATSITE_WORKERS", min(4, multiprocessing.cpu_count() * 2)))
# Each stream is one greenlet: this is how many clients one worker holds at once.
worker_connections = 1000
# A heartbeat, not a request limit: gevent workers notify the master while streaming.
timeout = 30
# Long enough for an answer in progress to finish after SIGTERM.
graceful_timeout = int(os.environ.get("CHATSITE_GRACEFUL_TIMEOUT", 120))
keepalive = 5


def _forwarded_allow_ips() -> str:
    """CHATSITE_FORWARDED_ALLOW_IPS (a JSON list or comma-separated), as gunicorn wants it."""
    value = os.environ.get("CHATSITE_FORWARDED_ALLOW_IPS", "127.0.0.1,::1").strip()
    return ",".join(json.loads(value)) if value.startswith("[") else value


# nginx on the same host is the one proxy whose X-Forwarded-* headers count: one hop, and
# only from these peer addresses (the app applies the same list; anyone else's headers are
# ignored, so a gunicorn reached directly cannot be told a false client address).
forwarded_allow_ips = _forwarded_allow_ips()
os.environ.setdefault("CHATSITE_PROXY_HOPS", "1")


def _load_logformat():
    """chatsite/operations/logformat.py, loaded without importing the chatsite package.

    This file runs in gunicorn's master, which must not import the app: its modules are
    imported by each worker after the gevent worker has monkey-patched the standard library.
    """
    package = importlib.util.find_spec("chatsite")
    path = os.path.join(package.submodule_search_locations[0], "operations", "logformat.py")
    spec = importlib.util.spec_from_file_location("chatsite_logformat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


logformat = _load_logformat()
# CHATSITE_LOG_FORMAT=json: every line is a JSON object, the master's too. The app then
# writes one line per request (with its id, user, model, instance, queue wait, tokens),
# which replaces gunicorn's access log.
log_format = logformat.check_format(os.environ.get("CHATSITE_LOG_FORMAT", "plain"))
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("CHATSITE_LOG_LEVEL", "info")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
        # JSON: the app's own request lines replace the access log (WARNING silences it).
        "gunicorn.access": {
            "level": "WARNING" if log_format == "json" else "INFO",
            "handlers": ["console"],
            "propagate": False,
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        },
    },
    "formatters": {"plain": logformat.formatter_config(log_format)},
}

# Prometheus metrics summed over the workers: each worker keeps its values in memory-mapped
# files in this folder, and /metrics merges them. A folder of our own unless the operator
# names one; either way emptied at start, so no earlier run's counts are added in.
# The folder is in memory (/dev/shm) where there is one: the workers write to these files on
# every request, and a file on disk would be written back to it now and then, which can make
# a write wait for the disk. (The folder made here is remembered in the environment: a
# reload reads this file again.)
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _memory = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="chatsite-metrics-", dir=_memory
    )
    os.environ["_CHATSITE_METRICS_DIR_MADE"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):
    """Start the metrics from zero."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, "*.db")):
        os.remove(stale)


def child_exit(server, worker):
    """A worker is gone: drop its live gauges (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this file made (never one the operator named)."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.environ.get("_CHATSITE_METRICS_DIR_MADE") == folder:
        shutil.rmtree(folder, ignore_errors=True)


def post_fork(server, worker):
    """Make psycopg2 wait through gevent, so PostgreSQL queries never block the worker."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def post_worker_init(worker):
    """Fetch the model catalog in the background (no first request waits for it); on SIGTERM,
    let streams run until just before gunicorn's deadline, then end them. Answers that
    outlive their client have no connection to keep the worker serving: it waits for them."""
    from chatsite.site import start_background_work
    from chatsite.streaming import detached, drain

    start_background_work(worker.wsgi)

    serve = worker.run

    def run():
        serve()
        detached.wait_for(worker.cfg.graceful_timeout, worker.notify)

    worker.run = run

    from chatsite.collector import tune_for_worker

    tune_for_worker()  # the app is loaded: its objects leave the collector's passes

    grace = max(worker.cfg.graceful_timeout * 0.8, worker.cfg.graceful_timeout - 10)
    original = worker.handle_exit

    def handle_exit(sig, frame):
        # A signal handler runs inside gevent's hub, where nothing may block (starting the
        # drain timer waits for its thread): start it from a greenlet, as gunicorn's gevent
        # worker does for its own SIGQUIT and SIGUSR1 handlers.
        import gevent

        gevent.spawn(drain.begin_drain, grace)
        original(sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)
