"""The bodies and answers of /search-chats, /export and /import-chats.

An export document is both an answer (of /export) and a request field (`document` of
/import-chats): one schema describes and validates it, so what /export gives,
/import-chats takes.
"""

import datetime
from typing import Any

from marshmallow import ValidationError, fields, post_load, validate, validates, validates_schema

from ..storage.chats import ChatSeed
from ..storage.export import EXPORT_FORMAT, EXPORT_VERSION
from ..storage.words import query_terms
from .responses import OkSchema
from .schemas import LimitedSchema, MessageSchema, StrictSchema

MAX_QUERY_CHARS = 200
MAX_SEARCH_LIMIT = 50
DEFAULT_SEARCH_LIMIT = 20
MAX_NAME_CHARS = 200  # what a chat's record holds


class SearchChatsSchema(LimitedSchema):
    """`{"token", "q", "limit"?}`."""

    q = fields.String(
        required=True,
        validate=validate.Length(1, MAX_QUERY_CHARS),
        metadata={"description": "Words to find, in any case, with or without accents."},
    )
    limit = fields.Integer(
        strict=True,
        load_default=DEFAULT_SEARCH_LIMIT,
        validate=validate.Range(1, MAX_SEARCH_LIMIT),
        metadata={"description": f"At most this many chats (default {DEFAULT_SEARCH_LIMIT})."},
    )

    @validates("q")
    def has_words(self, value: str, **kwargs: Any) -> None:
        if not query_terms(value):
            raise ValidationError("Must hold at least one word (letters or digits).")


class ExportSchema(LimitedSchema):
    """`{"token", "format"?}`."""

    format = fields.String(
        load_default="json",
        validate=validate.OneOf(["json", "markdown"]),
        metadata={
            "description": "`json` (the default; /import-chats takes it back) or "
            "`markdown` (one document to read)."
        },
    )


def naive_utc(value: datetime.datetime) -> datetime.datetime:
    """A time as the tables keep it: naive UTC (a time without offset is taken as UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


class ExportedChatSchema(StrictSchema):
    id = fields.String(
        metadata={
            "description": "The chat's id where it was exported; an imported chat gets a new one."
        }
    )
    name = fields.String(required=True, validate=validate.Length(1, MAX_NAME_CHARS))
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    messages = fields.List(fields.Nested(MessageSchema), required=True)

    @post_load
    def to_seed(self, data: dict, **kwargs: Any) -> ChatSeed:
        return ChatSeed(
            name=data["name"],
            messages=data["messages"],
            created_at=naive_utc(data["created_at"]),
            updated_at=naive_utc(data["updated_at"]),
        )


class ExportedUserSchema(StrictSchema):
    uuid = fields.String(required=True)
    nickname = fields.String(required=True)
    prompt_data = fields.Dict(required=True)
    site_prefs = fields.Dict(required=True)
    created_at = fields.String(required=True)


class ExportDocumentSchema(StrictSchema):
    """What /export gives in JSON, and /import-chats takes back (`user` is not imported)."""

    format = fields.String(required=True, validate=validate.Equal(EXPORT_FORMAT))
    version = fields.Integer(required=True, strict=True, validate=validate.Equal(EXPORT_VERSION))
    exported_at = fields.String(required=True)
    user = fields.Nested(ExportedUserSchema)
    chats = fields.List(
        fields.Nested(ExportedChatSchema),
        required=True,
        metadata={"description": "Newest first; any part of the list is a document too."},
    )


class ImportChatsSchema(LimitedSchema):
    """`{"token", "document"}`: an export's JSON, as /export gave it."""

    document = fields.Nested(ExportDocumentSchema, required=True)

    @validates_schema
    def check_sizes(self, data: dict, **kwargs: Any) -> None:
        """Each chat within what /chat accepts back (message count and length)."""
        for index, seed in enumerate(data["document"]["chats"]):
            where = f"document.chats.{index}.messages"
            if len(seed.messages) > self.limits.messages:
                raise ValidationError(f"At most {self.limits.messages} messages.", where)
            for number, message in enumerate(seed.messages):
                for text in ("content", "thinking"):
                    if len(message.get(text, "")) > self.limits.message_chars:
                        raise ValidationError(
                            f"Longer than {self.limits.message_chars} characters.",
                            f"{where}.{number}.{text}",
                        )


# --- answers ---------------------------------------------------------------------------


class FoundChatSchema(StrictSchema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    created_at = fields.String(required=True)
    updated_at = fields.String(required=True)
    snippet = fields.String(
        required=True,
        metadata={
            "description": "About 160 characters around the first match: of the "
            "first message holding a word, else of the name; `…` marks a cut."
        },
    )


class SearchAnswerSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.Equal("ok"))
    chats = fields.List(
        fields.Nested(FoundChatSchema),
        required=True,
        metadata={"description": "The chats holding every word, newest first by last update."},
    )


class ImportedChatSchema(StrictSchema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)


class RefusedChatSchema(StrictSchema):
    index = fields.Integer(required=True, metadata={"description": "Its place in `chats`."})
    msg = fields.String(required=True)


class ImportAnswerSchema(OkSchema):
    chats = fields.List(fields.Nested(ImportedChatSchema), required=True)
    refused = fields.List(
        fields.Nested(RefusedChatSchema),
        required=True,
        metadata={
            "description": "Chats past the user's chat or storage bound (nothing of them was kept)."
        },
    )
