"""The answers' shapes, for the OpenAPI description (and the tests that hold answers to it).

Nothing serializes through these: the views build their answers directly. The tests load
real answers with them (unknown fields are rejected), so the description stays true.
"""

from marshmallow import fields, validate

from .schemas import MessageSchema, StrictSchema

SEQ = {
    "description": "/chat and /resume: the line's number in its answer (0, 1, 2, ... in the "
    "order sent, queued lines too); /resume from a `seq` continues there."
}
GAP = {
    "description": "/resume only, on its first line: the lines asked for from `from` on are "
    "no longer all kept; the answer goes on from the oldest kept line."
}

SAVED_PENDING = (
    "Last line of a /chat with a `chatfile` only, when the database could not take the save: "
    "the exchange is kept on the server and will appear in the chat once the database is "
    "back. Absent when the exchange was saved at once."
)


class ErrorSchema(StrictSchema):
    """Every error answered before a stream starts."""

    status = fields.String(
        required=True,
        validate=validate.OneOf(["error", "nodata"]),
        metadata={"description": '"nodata" only when the user has no record (400).'},
    )
    msg = fields.String(required=True, metadata={"description": "A human-readable reason."})


class OkSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.Equal("ok"))
    msg = fields.String(required=True)


class PromptDataAnswerSchema(StrictSchema):
    system = fields.String(required=True)


class SitePrefsAnswerSchema(StrictSchema):
    model = fields.String(required=True)


class ChatEntrySchema(StrictSchema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    generating = fields.Boolean(
        validate=validate.Equal(True),
        metadata={"description": "Only on the chat whose answer is being produced now."},
    )


class ChatFilesSchema(StrictSchema):
    files = fields.List(
        fields.Nested(ChatEntrySchema),
        required=True,
        metadata={
            "description": "The user's newest chats (SETTINGS_CHAT_FILES, 100 by default), "
            "most recently updated first; /list-chats pages through all of them."
        },
    )


class UserPrefsSchema(StrictSchema):
    """The user's preferences, as /settings answers them."""

    uuid = fields.UUID(required=True)
    nickname = fields.String(required=True)
    prompt_data = fields.Nested(PromptDataAnswerSchema, required=True)
    site_prefs = fields.Nested(SitePrefsAnswerSchema, required=True)
    chat_files = fields.Nested(ChatFilesSchema, required=True)


class SettingsUpdatedSchema(OkSchema):
    userprefs = fields.Nested(UserPrefsSchema, required=True)


class ChatCreatedSchema(OkSchema):
    chatId = fields.UUID(required=True)


class ChatContentsSchema(OkSchema):
    contents = fields.List(
        fields.Nested(MessageSchema),
        required=True,
        metadata={"description": "The saved messages; they can be sent back to /chat as-is."},
    )


UNTOLD = {"description": "null when the chat server does not tell (the OpenAI API)."}


class ChatSummarySchema(StrictSchema):
    """One chat of a /list-chats page."""

    id = fields.UUID(required=True)
    name = fields.String(required=True)
    created_at = fields.String(required=True, metadata={"description": "ISO 8601 UTC."})
    updated_at = fields.String(
        required=True,
        metadata={"description": "ISO 8601 UTC: when a message was last saved to it."},
    )
    generating = fields.Boolean(
        required=True,
        metadata={"description": "An answer is being written to this chat now (/chat)."},
    )


class ChatListSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.Equal("ok"))
    chats = fields.List(
        fields.Nested(ChatSummarySchema),
        required=True,
        metadata={"description": "Newest update first; ties: the larger id first."},
    )
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Give it as `before` for the next page; null: no more."},
    )


class ModelSchema(StrictSchema):
    name = fields.String(
        required=True,
        metadata={"description": "As the instance lists it: on Ollama always with a tag."},
    )
    family = fields.String(required=True, allow_none=True, metadata=UNTOLD)
    parameter_size = fields.String(required=True, allow_none=True, metadata=UNTOLD)
    quantization_level = fields.String(required=True, allow_none=True, metadata=UNTOLD)
    size = fields.Integer(required=True, allow_none=True, metadata=UNTOLD)
    modified_at = fields.String(required=True, allow_none=True, metadata=UNTOLD)
    capabilities = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "completion, tools, insert, vision, thinking, ..."},
    )


class ModelListSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.Equal("ok"))
    models = fields.List(fields.Nested(ModelSchema), required=True)


class GenerateLineSchema(StrictSchema):
    """One line of a /generate stream."""

    status = fields.String(required=True, validate=validate.Equal("ok"))
    response = fields.String(required=True, metadata={"description": "The next piece of text."})
    finalMsg = fields.String(
        metadata={"description": "Last line only: the whole text, with `response` empty."}
    )
    stopped = fields.Boolean(metadata={"description": "Last line of a stream ended by /stop."})


class ChatLineSchema(StrictSchema):
    """One line of a /chat stream."""

    status = fields.String(required=True, validate=validate.Equal("ok"))
    msg = fields.String(required=True, metadata={"description": "The next piece of the reply."})
    done = fields.Boolean(required=True)
    tool = fields.String(metadata={"description": "A tool the server is running for the model."})
    thinking = fields.String(metadata={"description": "A piece of the model's thinking."})
    fullMsg = fields.String(
        metadata={"description": "Last line only: every `msg` of this answer, joined."}
    )
    stopped = fields.Boolean(metadata={"description": "Last line of a stream ended by /stop."})
    saved = fields.String(
        validate=validate.Equal("pending"), metadata={"description": SAVED_PENDING}
    )
    seq = fields.Integer(required=True, metadata=SEQ)
    gap = fields.Boolean(validate=validate.Equal(True), metadata=GAP)


class StreamErrorSchema(StrictSchema):
    """The last line of a stream that failed after it began."""

    status = fields.String(required=True, validate=validate.Equal("error"))
    msg = fields.String(required=True)
    done = fields.Boolean(required=True, validate=validate.Equal(True))
    saved = fields.String(
        validate=validate.Equal("pending"), metadata={"description": SAVED_PENDING}
    )
    seq = fields.Integer(metadata={"description": "/chat and /resume: as on every line."})
    gap = fields.Boolean(validate=validate.Equal(True), metadata=GAP)


class InstanceHealthSchema(StrictSchema):
    index = fields.Integer(required=True)
    reachable = fields.Boolean(required=True)
    models = fields.Integer(required=True, metadata={"description": "How many it serves."})
    slots_in_use = fields.Integer(required=True)
    max_concurrent = fields.Integer(required=True)


class HealthSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "error"]))
    database = fields.Boolean(required=True)
    instances = fields.List(fields.Nested(InstanceHealthSchema), required=True)


class QueuedLineSchema(StrictSchema):
    """With `queue_updates`: where a waiting request stands in the queue."""

    status = fields.String(required=True, validate=validate.Equal("queued"))
    position = fields.Integer(required=True, metadata={"description": "1 = next in line."})
    done = fields.Boolean(required=True, validate=validate.Equal(False))
    seq = fields.Integer(metadata={"description": "/chat and /resume: as on every line."})
    gap = fields.Boolean(validate=validate.Equal(True), metadata=GAP)
