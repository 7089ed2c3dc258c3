"""The OpenAPI 3 description of every route, built from the marshmallow schemas.

Request bodies come from the very schemas that validate them (apispec's MarshmallowPlugin),
so the description cannot drift from validation: unknown fields are `additionalProperties:
false`, lengths and patterns come from the fields' validators, and the limits that come from
the configuration (prompt length, message count, ...) are filled in from the running app's.
What the schemas cannot say (the answers, the error codes, the streamed lines) is in
`OPERATIONS`, one entry per route and method; a route without one is described as
`UNDESCRIBED`, and tests/test_openapi.py fails on it.
"""

import logging
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields

from ..media import NDJSON
from . import chat_data, responses, schemas
from .options import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, SAMPLING_OPTIONS, OptionRules

log = logging.getLogger(__name__)

UNDESCRIBED = "(not described)"

INTRODUCTION = """\
The back end of an LLM chat web site. Every API endpoint is a `POST` with a JSON body that
carries `token`, a JWT whose `sub` claim is the user's uuid; the token is checked before
anything else, so a bad one is a 401 whatever else is wrong. Errors answered before a stream
starts are `{"status": "error", "msg": "..."}`. `/chat` and `/generate` stream NDJSON: one
JSON object per line (each line's schema is given), sent as soon as it exists; an error after
the stream began is a last line `{"status": "error", "msg": "...", "done": true}`. The
operations endpoints (`GET`) are for load balancers, monitoring and this page.

The chat instances behind it are of two kinds (`CHAT_INSTANCES`, each entry's `api`):
`ollama` (Ollama's API) and `openai` (the OpenAI API as vLLM, SGLang and llama.cpp serve
it, at a URL ending in `/v1`). Both kinds may serve one pool; a client sees the same
endpoints, lines and saved chats whichever kind answers."""

# Error answers, by status code: (component name, description).
ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "The body is not a JSON object, or a field is missing, of the wrong "
        "type, unknown or invalid (the message names it).",
    ),
    401: ("Unauthorized", "Missing, malformed, badly signed, expired or not-yet-valid token."),
    404: ("NotFound", "No such chat for this user (never tells which)."),
    413: ("TooLarge", "The body is larger than the configured limit (1 MiB by default)."),
    429: ("Busy", "This user already has a /chat or /generate in flight; see Retry-After."),
    500: ("ServerError", "The chat server or the storage failed (no details are given)."),
    502: ("BadGateway", "A chat server refused chatsite's own credentials: for the operator."),
    503: ("Unavailable", "A back end (database, Redis) is down, or too many requests wait."),
    504: ("NoInstance", "No chat instance serving the model freed up within the wait."),
}
BODY_ERRORS = (400, 401, 413, 503)


@dataclass(frozen=True)
class Operation:
    """What the schemas cannot tell about one route and method."""

    summary: str
    description: str
    tag: str = "api"
    body: type[Schema] | None = None
    answer: type[Schema] | None = None  # a JSON answer with 200
    lines: tuple[type[Schema], ...] = ()  # a streamed NDJSON answer: each line is one of these
    media: str | None = None  # another 200 content type (text/html, text/plain, ...)
    errors: tuple[int, ...] = ()
    example: dict[str, Any] | None = None
    # Codes with a meaning of their own here; one of `errors` keeps the error body.
    answers: dict[int, str] = field(default_factory=dict)


TOKEN = "<a JWT whose sub is the user's uuid>"

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/settings", "POST"): Operation(
        "The user's preferences and chats",
        "The user's record is created on the first valid token unless AUTO_CREATE_USERS is "
        "off; then a user without one gets a 500 `No user data found`.",
        body=schemas.TokenOnlySchema,
        answer=responses.UserPrefsSchema,
        errors=(*BODY_ERRORS, 500),
        example={"token": TOKEN},
    ),
    ("/update-settings", "POST"): Operation(
        "Change some preferences",
        "A partial update: only the fields given change; any invalid one is a 400 and nothing "
        "changes. A model must be one that /models offers (when the list can be fetched).",
        body=schemas.UpdateSettingsSchema,
        answer=responses.SettingsUpdatedSchema,
        errors=BODY_ERRORS,
        example={"token": TOKEN, "prefs": {"nickname": "Ada", "site_prefs": {"model": "llama3"}}},
    ),
    ("/create-chat", "POST"): Operation(
        'Create an empty chat named "New chat"',
        "A 400 with status `nodata` when the user has no record (automatic creation off).",
        body=schemas.TokenOnlySchema,
        answer=responses.ChatCreatedSchema,
        errors=(*BODY_ERRORS, 500),
        example={"token": TOKEN},
    ),
    ("/get-chat", "POST"): Operation(
        "The messages of one of the user's chats",
        "A chat that does not exist and one of another user are both a 404. While the "
        "database is away, a 503; a reply that ended meanwhile (`saved: pending`) appears "
        "once it is back.",
        body=schemas.ChatIdSchema,
        answer=responses.ChatContentsSchema,
        errors=(*BODY_ERRORS, 404),
        example={"token": TOKEN, "chatId": "6f1c8a52-3f7e-4f0e-9a51-2b7d0d2c9e11"},
    ),
    ("/list-chats", "POST"): Operation(
        "A page of the user's chats, newest update first",
        "Keyset paging on the last update and the id: give `next` back as `before` for the "
        "next page (`null`: no more). A chat added or updated while someone pages goes to "
        "the top and never makes another chat skip or show twice. `generating` marks the "
        "chat a /chat in flight is writing to.",
        body=schemas.ListChatsSchema,
        answer=responses.ChatListSchema,
        errors=BODY_ERRORS,
        example={"token": TOKEN, "limit": 50},
    ),
    ("/rename-chat", "POST"): Operation(
        "Name one of the user's chats",
        "The name is the user's from then on: a title model never replaces it. A chat that "
        "does not exist and one of another user are both a 404.",
        body=schemas.RenameChatSchema,
        answer=responses.OkSchema,
        errors=(*BODY_ERRORS, 404),
        example={"token": TOKEN, "chatId": "6f1c8a52-3f7e-4f0e-9a51-2b7d0d2c9e11", "name": "Rome"},
    ),
    ("/delete-chat", "POST"): Operation(
        "Delete one of the user's chats",
        "The chat's record and transcript are gone and no longer count against the storage "
        "limit. An answer being written to it is stopped first, as /stop does. A chat that "
        "does not exist and one of another user are both a 404.",
        body=schemas.ChatIdSchema,
        answer=responses.OkSchema,
        errors=(*BODY_ERRORS, 404),
        example={"token": TOKEN, "chatId": "6f1c8a52-3f7e-4f0e-9a51-2b7d0d2c9e11"},
        answers={
            503: "The answer being written did not stop within STOP_TIMEOUT seconds (nothing "
            "was deleted; with Retry-After), or a back end (database, Redis) is down.",
        },
    ),
    ("/delete-account", "POST"): Operation(
        "Delete the account and everything kept about it",
        "`confirm` must be the user's uuid. Any answer in progress is stopped first; then "
        "every chat, transcript and the user's record are deleted. A later valid token for "
        "the same uuid starts a fresh user.",
        body=schemas.DeleteAccountSchema,
        answer=responses.OkSchema,
        errors=BODY_ERRORS,
        example={"token": TOKEN, "confirm": "<the user's uuid>"},
        answers={
            503: "The answer in progress did not stop within STOP_TIMEOUT seconds (nothing "
            "was deleted; with Retry-After), or a back end (database, Redis) is down.",
        },
    ),
    ("/search-chats", "POST"): Operation(
        "Find the user's chats by the words in their names and messages",
        "Every word of `q` must be in the chat (its name or its messages' text); case, "
        "accents and full-width forms do not matter, and a word also finds the longer words "
        "it begins (`tomat` finds tomatoes). Text written without spaces (Chinese, Japanese, "
        "Thai...) is found wherever it occurs. Newest first by last update; through an index "
        "in the database, kept with every save.",
        body=chat_data.SearchChatsSchema,
        answer=chat_data.SearchAnswerSchema,
        errors=BODY_ERRORS,
        example={"token": TOKEN, "q": "crème brûlée", "limit": 20},
    ),
    ("/export", "POST"): Operation(
        "Download everything kept about the user",
        "A streamed attachment (`Content-Disposition`): the user's settings and every chat "
        "with its messages, newest first by creation. With `format: markdown`, the same as "
        "one Markdown document (`text/markdown`). /import-chats takes the JSON back.",
        body=chat_data.ExportSchema,
        answer=chat_data.ExportDocumentSchema,
        errors=(*BODY_ERRORS, 500),
        example={"token": TOKEN, "format": "json"},
    ),
    ("/import-chats", "POST"): Operation(
        "Take an export's chats back as new chats of this user",
        "Each chat keeps its name, dates and messages and gets a new id; each is imported "
        "whole or not at all, within the user's chat and storage bounds (a chat past them "
        "is listed in `refused`; a 400 when none fits). A document that does not validate "
        "is a 400 naming the field, and nothing is imported. A document larger than the "
        "body limit can be sent in parts: any part of its `chats` is a document too.",
        body=chat_data.ImportChatsSchema,
        answer=chat_data.ImportAnswerSchema,
        errors=(*BODY_ERRORS, 500),
        example={
            "token": TOKEN,
            "document": {
                "format": "chatsite-export",
                "version": 1,
                "exported_at": "2026-01-02T10:00:00.000Z",
                "chats": [
                    {
                        "name": "Trip to Rome",
                        "created_at": "2026-01-01T09:00:00.000Z",
                        "updated_at": "2026-01-01T09:05:00.000Z",
                        "messages": [{"role": "user", "content": "Hello!"}],
                    }
                ],
            },
        },
    ),
    ("/models", "POST"): Operation(
        "The models the chat instances serve",
        "Each model once, with its capabilities; an instance that is down is left out. "
        "Each worker fetches the list in the background, as it starts and then every "
        "MODELS_CACHE_SECONDS.",
        body=schemas.TokenOnlySchema,
        answer=responses.ModelListSchema,
        errors=BODY_ERRORS,
        example={"token": TOKEN},
    ),
    ("/generate", "POST"): Operation(
        "Stream a completion, or fill in the middle with a suffix",
        "`model` defaults to the user's preferred model. The last line carries `finalMsg`, "
        "the whole text. Every status code is decided before the stream starts.",
        body=schemas.GenerateSchema,
        lines=(responses.GenerateLineSchema, responses.StreamErrorSchema),
        errors=(*BODY_ERRORS, 429, 500, 502, 504),
        example={"token": TOKEN, "model": "llama3", "prompt": "Once upon a time"},
    ),
    ("/chat", "POST"): Operation(
        "Stream the next reply of a conversation",
        "`model` defaults to the user's preferred model and `system` to the user's system "
        "prompt. With `chatfile`, the exchange is saved to that chat (404 if it is not the "
        "user's). The last line carries `fullMsg`, every `msg` of the answer joined, and "
        "`saved: pending` when the database could not take the save: the exchange is kept "
        "and appears in the chat once the database is back.",
        body=schemas.ChatSchema,
        lines=(responses.ChatLineSchema, responses.StreamErrorSchema),
        errors=(*BODY_ERRORS, 404, 429, 500, 502, 504),
        example={
            "token": TOKEN,
            "model": "llama3",
            "messages": [{"role": "user", "content": "Hello!"}],
        },
    ),
    ("/stop", "POST"): Operation(
        "End this user's /chat or /generate in flight",
        "Answers once the stream has ended and the user is free again.",
        body=schemas.TokenOnlySchema,
        answer=responses.OkSchema,
        errors=(*BODY_ERRORS, 404),
        example={"token": TOKEN},
        answers={
            404: "Nothing to stop: this user has no /chat or /generate in flight.",
            503: "The request did not end within STOP_TIMEOUT seconds (`the request did not "
            "stop in time`, with Retry-After), or a back end (database, Redis) is down.",
        },
    ),
    ("/resume", "POST"): Operation(
        "Follow the answer of a chat again, from a line on",
        "Re-attaches to the user's answer of the chat (a /chat with `chatfile`), wherever it "
        "runs: the lines with `seq >= from` (default 0: the whole answer), then the live "
        "stream to its last line, the one the original client would have had. Works while "
        "the answer runs and RESUME_KEEP_SECONDS after it ended. Several readers may follow "
        "one answer. If older lines than `from` are no longer kept, the first line carries "
        "`gap: true`; if the answer's server was killed, the last line is an error line.",
        body=schemas.ResumeSchema,
        lines=(responses.ChatLineSchema, responses.QueuedLineSchema, responses.StreamErrorSchema),
        errors=(*BODY_ERRORS, 404),
        example={"token": TOKEN, "chatId": "6f1c8a52-3f7e-4f0e-9a51-2b7d0d2c9e11", "from": 0},
        answers={
            404: "`nothing to resume`: no answer of this chat is running or ended within "
            "RESUME_KEEP_SECONDS (another user's chat, an unknown chat too); the saved chat "
            "is in /get-chat.",
        },
    ),
    ("/healthz", "GET"): Operation(
        "Database and chat instances, for load balancers",
        "200 when the database answers and at least one instance is reachable, else 503 "
        "(with the same body). Keep it to internal addresses (deploy/nginx.conf).",
        tag="operations",
        answer=responses.HealthSchema,
        answers={503: "Not healthy: the same body, with `status: error`."},
    ),
    ("/metrics", "GET"): Operation(
        "Prometheus metrics for the whole host",
        "Prometheus text format, summed over the host's workers. Every series exists from "
        "the first scrape (each model of the catalog and each configured instance at 0). "
        "Keep it to internal addresses (deploy/nginx.conf).",
        tag="operations",
        media="text/plain",
    ),
    ("/openapi.json", "GET"): Operation(
        "This description",
        "OpenAPI 3, built from the request schemas.",
        tag="operations",
        media="application/json",
    ),
    ("/docs", "GET"): Operation(
        "The interactive API page",
        "Served with all its assets by the app itself.",
        tag="operations",
        media="text/html",
    ),
    ("/docs/<asset>", "GET"): Operation(
        "An asset of the API page",
        "Scripts, style sheets and icons of the page.",
        tag="operations",
        media="application/octet-stream",
        answers={404: "No such asset."},
    ),
}

# Request fields whose limits come from the configuration: (schema, field, keyword, limit).
CONFIGURED_LIMITS = (
    ("Generate", "prompt", "maxLength", "prompt_chars"),
    ("Generate", "suffix", "maxLength", "prompt_chars"),
    ("Chat", "system", "maxLength", "system_prompt_chars"),
    ("Chat", "messages", "maxItems", "messages"),
    ("PromptData", "system", "maxLength", "system_prompt_chars"),
)


def describe_custom_fields(
    self: Any, field: fields.Field, ret: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """What apispec cannot read from a custom field's own checks."""
    if isinstance(field, schemas.ShownName):
        return {
            "minLength": 1,
            "maxLength": field.max_chars,
            "description": f"Trimmed; 1 to {field.max_chars} characters; no control or "
            "invisible formatting characters (Unicode Cc, Cf).",
        }
    if isinstance(field, schemas.Cursor):
        return {"description": "The `next` of the page before, as it came (opaque)."}
    if isinstance(field, schemas.ModelName):
        return {
            "description": "A model name as /models lists it; without a tag it also means "
            "`:latest`, as in Ollama (an OpenAI API model id is taken as it is)."
        }
    if isinstance(field, fields.Dict) and "maxLength" in ret:
        return {"maxProperties": ret.pop("maxLength")}  # a length check on a dict counts keys
    if field.name == "token" and isinstance(field.parent, schemas.LimitedSchema):
        return {"description": "A JWT whose `sub` claim is the user's uuid."}
    return {}


def openapi_path(rule: str) -> str:
    """`/docs/<path:asset>` -> `/docs/{asset}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def openapi_rule_key(rule: str) -> str:
    """`/docs/<path:asset>` -> `/docs/<asset>`: table keys leave out the converters."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"<\1>", rule)


def _json(schema: type[Schema] | str) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(op: Operation, rule_arguments: list[str]) -> dict[str, Any]:
    """The OpenAPI operation object for one table entry."""
    result: dict[str, Any] = {"summary": op.summary, "description": op.description}
    result["tags"] = [op.tag]
    if rule_arguments:
        result["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in rule_arguments
        ]
    if op.body is not None:
        content = _json(op.body)
        if op.example is not None:
            content["application/json"]["example"] = op.example
        result["requestBody"] = {"required": True, "content": content}
    if op.answer is not None:
        ok = {"description": "OK", "content": _json(op.answer)}
    elif op.lines:
        schema = {"oneOf": list(op.lines)} if len(op.lines) > 1 else op.lines[0]
        ok = {
            "description": "A stream: one JSON object per line, each line one of these.",
            "headers": {
                "X-Accel-Buffering": {
                    "description": "Tells nginx to pass each line on at once.",
                    "schema": {"type": "string", "enum": ["no"]},
                }
            },
            "content": {NDJSON: {"schema": schema}},
        }
    else:
        ok = {"description": "OK", "content": {op.media or "text/plain": {"schema": {}}}}
    result["responses"] = {"200": ok}
    for code in op.errors:
        result["responses"][str(code)] = {"$ref": f"#/components/responses/{ERRORS[code][0]}"}
    for code, text in op.answers.items():
        answer: dict[str, Any] = {"description": text}
        if code in op.errors:
            answer["content"] = _json("Error")
            if code in (429, 503):
                answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        elif op.answer is not None:  # the same body (e.g. /healthz's 503)
            answer["content"] = _json(op.answer)
        result["responses"][str(code)] = answer
    return result


def _queue_updates_enabled() -> bool:
    """Whether /chat and /generate accept `queue_updates` (then a `queued` line exists)."""
    return "queue_updates" in schemas.ChatSchema._declared_fields


def build(app: Flask) -> dict[str, Any]:
    """Describe every route of `app`'s URL map, with the app's configured limits."""
    plugin = MarshmallowPlugin()
    try:
        release = version("chatsite")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled checkout
        release = "0"
    spec = APISpec(
        title="chatsite",
        version=release,
        openapi_version="3.0.3",
        info={"description": INTRODUCTION},
        plugins=[plugin],
        tags=[
            {"name": "api", "description": "The chat site's endpoints (POST, JSON, token)."},
            {"name": "operations", "description": "For operators and front-end developers."},
        ],
    )
    plugin.converter.add_attribute_function(describe_custom_fields)
    spec.components.schema("Error", schema=responses.ErrorSchema)
    for code, (name, description) in ERRORS.items():
        answer: dict[str, Any] = {"description": description, "content": _json("Error")}
        if code == 429:
            answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        spec.components.response(name, answer)
    lines_extra = [responses.QueuedLineSchema] if _queue_updates_enabled() else []
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op = OPERATIONS.get((openapi_rule_key(rule.rule), method))
            if op is None:
                log.warning("no OpenAPI description for %s %s", method, rule.rule)
                described = {"summary": UNDESCRIBED, "responses": {"default": {"description": ""}}}
            else:
                if op.lines and lines_extra:
                    op = Operation(**{**op.__dict__, "lines": (*op.lines, *lines_extra)})
                described = _operation(op, sorted(rule.arguments))
            paths.setdefault(openapi_path(rule.rule), {})[method.lower()] = described
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _apply_configured_limits(document, app)
    return document


def options_schema(rules: OptionRules) -> dict[str, Any]:
    """The `options` object the running app accepts: each allowed option with its range."""
    properties: dict[str, Any] = {}
    for name, (low, high, integer) in SAMPLING_OPTIONS.items():
        kind = "integer" if integer else "number"
        properties[name] = {"type": kind, "minimum": low, "maximum": high, "nullable": True}
    properties["num_predict"] = {
        "type": "integer",
        "minimum": 1,
        "maximum": rules.max_num_predict,
        "nullable": True,
        "description": f"Without it, {rules.max_num_predict} is sent.",
    }
    properties["stop"] = {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
        "maxItems": MAX_STOP_SEQUENCES,
        "nullable": True,
    }
    for name, bounds in rules.allowed.items():  # the operator's rules replace built-in ones
        extra = {"description": "Allowed by the operator (ALLOWED_OPTIONS)."}
        if bounds is not None:
            extra.update(type="number", minimum=bounds[0], maximum=bounds[1], nullable=True)
        properties[name] = extra
    return {
        "type": "object",
        "description": "Sampling settings only; any other option is a 400 naming it. "
        "`null` means not set.",
        "properties": dict(sorted(properties.items())),
        "additionalProperties": False,
    }


def _apply_configured_limits(document: dict[str, Any], app: Flask) -> None:
    """Write the running app's size limits and option rules into the request schemas."""
    limits = schemas.Limits.from_config(app.config)
    components = document["components"]["schemas"]
    components["Options"] = options_schema(limits.options)
    for component in components.values():
        if "options" in component.get("properties", {}):
            component["properties"]["options"] = {"$ref": "#/components/schemas/Options"}
    for schema_name, field_name, keyword, limit in CONFIGURED_LIMITS:
        prop = components.get(schema_name, {}).get("properties", {}).get(field_name)
        if prop is not None:
            prop[keyword] = getattr(limits, limit)
    messages = components.get("Chat", {}).get("properties", {}).get("messages")
    if messages is not None:
        messages["minItems"] = 1
        messages["description"] = (
            f"The conversation so far; each message's content at most "
            f"{limits.message_chars} characters."
        )


def description(app: Flask) -> dict[str, Any]:
    """The app's description, built once (the URL map does not change once serving)."""
    document = app.extensions.get("chatsite.openapi")
    if document is None:
        document = app.extensions["chatsite.openapi"] = build(app)
    return document
