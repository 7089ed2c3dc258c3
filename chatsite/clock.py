"""The service's one clock: UTC, so that every stamp and date agrees on every host."""

import datetime


def utc_now() -> datetime.datetime:
    """Aware UTC time."""
    return datetime.datetime.now(datetime.UTC)


def utc_stamp() -> str:
    """Now, as ISO 8601 UTC with milliseconds: what a chat's messages carry."""
    return utc_now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
