"""The service's one clock: UTC, so that every stamp and date agrees on every host."""

import datetime


def utc_now() -> datetime.datetime:
    """Aware UTC time."""
    return datetime.datetime.now(datetime.UTC)


def utc_stamp() -> str:
    """Now, as ISO 8601 UTC with milliseconds: what a chat's messages carry."""
    return stamp_of(utc_now())


def stamp_of(moment: datetime.datetime) -> str:
    """A time as `utc_stamp` writes it; a naive one (as the tables keep them) is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
