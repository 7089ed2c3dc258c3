"""CHAT_INSTANCES read and checked: each entry's URL, slots and kind of wire, with its client.

An entry is a bare URL (an Ollama server with one slot) or
`{"url", "max_concurrent", "api": "ollama" | "openai", "api_key_env", "models"}`. A bad
entry stops the app at start with a message that names it; the key itself is read from
the environment variable named by `api_key_env` and never shown.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import Instance
from .client import InstanceClient
from .protocols.base import KNOWN_CAPABILITIES, WireProtocol
from .protocols.ollama import OllamaProtocol
from .protocols.openai import OpenAIProtocol

APIS = ("ollama", "openai")
FIELDS = {"url", "max_concurrent", "api", "api_key_env", "models"}
SETTING = "CHAT_INSTANCES"


@dataclass(frozen=True)
class InstanceConfig:
    """One checked entry of CHAT_INSTANCES."""

    url: str
    max_concurrent: int = 1
    api: str = "ollama"
    api_key_env: str | None = None
    models: dict[str, list[str]] = field(default_factory=dict)  # openai: capabilities by id


def _fail(what: str) -> ValueError:
    return ValueError(f"{SETTING}: {what}")


def _capabilities(url: str, models: Any) -> dict[str, list[str]]:
    if not isinstance(models, Mapping):
        raise _fail(f"models of {url} must be an object: model id -> list of capabilities")
    checked = {}
    for name, words in models.items():
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise _fail(f"models[{name!r}] of {url} must be a list of capabilities")
        unknown = sorted(set(words) - KNOWN_CAPABILITIES)
        if unknown:
            known = ", ".join(sorted(KNOWN_CAPABILITIES))
            raise _fail(f"models[{name!r}] of {url}: unknown capability {unknown} ({known})")
        checked[name] = list(dict.fromkeys(words))
    return checked


def parse_entry(item: Any) -> InstanceConfig:
    """Check one entry; raise ValueError naming what is wrong with it."""
    if isinstance(item, str):
        item = {"url": item}
    if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
        raise _fail(f"bad entry {item!r}")
    url = item["url"]
    if not url.startswith(("http://", "https://")):
        raise _fail(f"{url!r} is not an http(s) URL")
    url = url.rstrip("/")
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        raise _fail(f"unknown field {unknown} for {url} (known: {', '.join(sorted(FIELDS))})")
    capacity = item.get("max_concurrent", 1)
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise _fail(f"bad max_concurrent for {url}")
    api = item.get("api", "ollama")
    if api not in APIS:
        raise _fail(f"api of {url} must be one of {', '.join(APIS)}, not {api!r}")
    if api == "openai" and not url.endswith("/v1"):
        raise _fail(f"an OpenAI API URL ends in /v1, as OpenAI clients take it, not {url!r}")
    key_env = item.get("api_key_env")
    if key_env is not None:
        if not isinstance(key_env, str) or not key_env:
            raise _fail(f"api_key_env of {url} must name an environment variable")
        if not os.environ.get(key_env):
            raise _fail(f"api_key_env of {url}: the environment variable {key_env} is not set")
    models = item.get("models")
    if models is not None and api != "openai":
        raise _fail(f"models of {url}: only an OpenAI API instance needs them (Ollama tells)")
    return InstanceConfig(url, capacity, api, key_env, _capabilities(url, models or {}))


def parse_instances(value: Any) -> list[InstanceConfig]:
    """Read CHAT_INSTANCES: a list of entries (a single one is taken as a list of one)."""
    if isinstance(value, str | Mapping):
        value = [value]
    if value is not None and not isinstance(value, list | tuple):
        raise _fail(f"must be a list, not {value!r}")
    return [parse_entry(item) for item in value or []]


def protocol_for(config: InstanceConfig, passed_options: frozenset[str]) -> WireProtocol:
    """The wire protocol object of one instance."""
    if config.api == "openai":
        return OpenAIProtocol(config.models, passed_options)
    return OllamaProtocol()


def build_instances(config: Mapping[str, Any]) -> list[Instance]:
    """One Instance, with its pooled HTTP client and its wire protocol, per entry."""
    allowed = config.get("ALLOWED_OPTIONS") or {}
    passed = frozenset(allowed) if isinstance(allowed, Mapping) else frozenset()
    instances = []
    for entry in parse_instances(config["CHAT_INSTANCES"]):
        protocol = protocol_for(entry, passed)
        client = InstanceClient(
            entry.url,
            connect_timeout=float(config["UPSTREAM_CONNECT_TIMEOUT"]),
            read_timeout=float(config["UPSTREAM_READ_TIMEOUT"]),
            max_seconds=float(config["UPSTREAM_MAX_SECONDS"]),
            max_line=int(config["UPSTREAM_MAX_LINE_BYTES"]),
            pool_size=max(entry.max_concurrent, 10),
            sse=protocol.sse,
            api_key=os.environ[entry.api_key_env] if entry.api_key_env else None,
            read_error=protocol.error_text,
        )
        instances.append(Instance(entry.url, entry.max_concurrent, client, protocol))
    return instances
