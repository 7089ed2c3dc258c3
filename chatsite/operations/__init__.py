"""Operations: what an operator and a front-end developer need to see the service.

`metrics` (Prometheus, summed over a host's workers), `requestlog` (a record and a log line
per request, with its id), `logformat` (plain or JSON lines). `init_app` wires the
per-request parts into the app. The API description is the HTTP edge's own
(`chatsite/api/description.py`).
"""

import logging

from flask import Flask, Response, request

from ..media import NDJSON
from . import metrics, requestlog
from .logformat import JsonFormatter, check_format


def _tag_log_records() -> None:
    """Give every log record the id of the request being served (None outside one)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "chatsite_request_id", False):
        return  # already installed (one per process, however many apps are built)

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = requestlog.current_request_id()
        return record

    make_record.chatsite_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def _log_to_stderr_as_json() -> None:
    """The dev server configures no logging: give it JSON lines (gunicorn has its own)."""
    if not logging.root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.root.addHandler(handler)
        logging.root.setLevel(logging.INFO)


def init_app(app: Flask) -> None:
    """Start a record for each request, count it, log it (JSON mode), echo its id.

    Registered before every other hook, so that each request has its own record.
    """
    log_requests = check_format(app.config["LOG_FORMAT"]) == "json"
    _tag_log_records()
    if log_requests:
        _log_to_stderr_as_json()

    @app.before_request
    def begin_record() -> None:
        rule = request.url_rule
        requestlog.begin(
            requestlog.request_id_from(request.headers.get(requestlog.REQUEST_ID_HEADER)),
            request.method,
            rule.rule if rule is not None else "other",  # unknown paths: one label, not many
            log_requests,
        )

    @app.after_request
    def end_record(response: Response) -> Response:
        record = requestlog.current()
        if record is None:  # pragma: no cover - begin_record always runs first
            return response
        record.status = response.status_code
        response.headers[requestlog.REQUEST_ID_HEADER] = record.request_id
        metrics.count_request(record.endpoint, response.status_code)
        if response.mimetype != NDJSON:  # a stream's line is written when the stream ends
            record.write()
        return response
