"""Ids that name files and keys: only canonical uuids, so no id can ever become a path."""

import uuid


def canonical_uuid(value: object) -> str:
    """Return `value` re-parsed as a uuid in its one canonical form; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("an id must be a uuid string")
    return str(uuid.UUID(value))
