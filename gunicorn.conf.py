"""gunicorn settings for chatsite: gevent workers holding many long streams.

`make serve` uses it; so does deploy/chatsite.service. Every value can be overridden on the
command line or with GUNICORN_CMD_ARGS.
"""

import json
import multiprocessing
import os
import signal

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
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("CHATSITE_LOG_LEVEL", "info")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        },
    },
    "formatters": {
        "plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"}
    },
}


def post_fork(server, worker):
    """Make psycopg2 wait through gevent, so PostgreSQL queries never block the worker."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def post_worker_init(worker):
    """On SIGTERM, let streams run until just before gunicorn's deadline, then end them."""
    from chatsite.streaming import drain

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
