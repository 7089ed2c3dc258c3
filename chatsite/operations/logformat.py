"""Log formats: the plain one, and one JSON object per line (LOG_FORMAT=json).

Standard library only, on purpose: gunicorn.conf.py loads this file in gunicorn's master
process without importing the chatsite package (whose imports must wait for the gevent
worker's monkey-patching), so that the master's own lines are JSON too.
"""

import json
import logging
import time
from typing import Any

PLAIN = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, and the extra fields.

    A request's line carries its fields (request id, user id, endpoint, status, duration,
    model, instance, queue wait, tokens) at the top level; any line written while a request
    is being served carries its `request_id`.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                if key == "request" and isinstance(value, dict):
                    entry.update(value)
                elif value is not None:
                    entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO 8601 UTC with milliseconds, as the chat files' timestamps."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


def formatter_config(log_format: str) -> dict[str, Any]:
    """The `logging.config.dictConfig` formatter entry for LOG_FORMAT."""
    if log_format == "json":
        return {"()": JsonFormatter}
    return {"format": PLAIN}


def check_format(log_format: str) -> str:
    """Return LOG_FORMAT if it is one of "plain" and "json", else raise."""
    if log_format not in ("plain", "json"):
        raise ValueError(f"LOG_FORMAT must be 'plain' or 'json', not {log_format!r}")
    return log_format
