"""Cross-origin access for front-end dev servers, with flask-cors."""

import re

from flask import Flask
from flask_cors import CORS


def origin_pattern(origin: str) -> str | re.Pattern:
    """Turn `http://localhost:*` into an anchored pattern; plain origins stay literal."""
    if "*" not in origin:
        return origin.rstrip("/")
    parts = []
    for index, piece in enumerate(origin.split("*")):
        if index:
            # A wildcard after ":" is a port; anywhere else, one host label.
            parts.append("[0-9]{1,5}" if parts[-1].endswith(":") else "[A-Za-z0-9-]+")
        parts.append(re.escape(piece))
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE)


def init_app(app: Flask) -> None:
    """Allow the configured origins (none by default)."""
    origins = app.config.get("CORS_ORIGINS") or []
    if isinstance(origins, str):
        origins = [origins]
    if origins:
        CORS(app, origins=[origin_pattern(o) for o in origins], methods=["POST", "GET"])
