"""Who may use what right now: user locks, instance slots and the lines of waiting requests,
shared as far as needed, and stop requests carried to wherever a request runs.

`Coordinator` is the protocol; `LocalCoordinator` spans one process, `FileCoordinator` all
workers of a host (flock), `RedisCoordinator` every host.
"""

from .base import Coordinator, Lease, Ticket, instance_key
from .files import FileCoordinator
from .local import LocalCoordinator
from .redis import RedisCoordinator

__all__ = [
    "Coordinator",
    "FileCoordinator",
    "Lease",
    "LocalCoordinator",
    "RedisCoordinator",
    "Ticket",
    "instance_key",
    "make_coordinator",
]


def make_coordinator(config: dict) -> Coordinator:
    """Pick the coordination that spans what the deployment needs.

    Redis when `REDIS_URL` is set (several hosts); else file locks in the instance folder
    (all workers of one host); `COORDINATION = "local"` keeps it inside one process.
    """
    if config.get("REDIS_URL"):
        return RedisCoordinator(
            config["REDIS_URL"], prefix=config["REDIS_PREFIX"], ttl=float(config["LEASE_TTL"])
        )
    if config.get("COORDINATION") == "local":
        return LocalCoordinator()
    return FileCoordinator(config["LOCK_DIR"])
