"""X-Forwarded-* headers count only when they come from a configured proxy address.

Any client can send `X-Forwarded-For`; only a reverse proxy in front of chatsite (nginx on
the same host by default) says something true with it. Requests from other peers keep
their own address, scheme and host, even when `PROXY_HOPS` is set.
"""

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(value: str | Iterable[str]) -> list[Network] | None:
    """Read `FORWARDED_ALLOW_IPS`: addresses or networks, a list or comma-separated.

    `*` trusts every peer (None); anything unparseable is a ValueError at start-up.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(item).strip() for item in items if str(item).strip()]
    if "*" in items:
        return None
    try:
        return [ipaddress.ip_network(item, strict=False) for item in items]
    except ValueError as error:
        raise ValueError(f"FORWARDED_ALLOW_IPS: {error}") from None


def peer_is_trusted(peer: str | None, trusted: list[Network] | None) -> bool:
    """Tell whether the address that connected is one of the trusted proxies."""
    if trusted is None:
        return True
    try:
        address = ipaddress.ip_address((peer or "").split("%", 1)[0])
    except ValueError:
        return False  # a Unix socket or no address: not a configured proxy
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)


class TrustedProxyFix:
    """Apply ProxyFix to requests from trusted peers only; others pass untouched."""

    def __init__(self, app: Any, hops: int, trusted: list[Network] | None) -> None:
        self.app = app
        self.fixed = ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops)
        self.trusted = trusted

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        if peer_is_trusted(environ.get("REMOTE_ADDR"), self.trusted):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)
