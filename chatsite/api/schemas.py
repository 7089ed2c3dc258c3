"""Request bodies, validated at the edge; unknown fields are always rejected."""

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from .. import defaults
from ..llm.protocols.base import MAX_MODEL_NAME_CHARS
from ..storage.chats import BadCursor, decode_cursor
from ..streaming.limits import MAX_TOOL_CALLS
from .options import OptionRules

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
ROLES = ("user", "assistant", "tool", "system")
MAX_OPTIONS = 64
MAX_IMAGES = 8
MAX_IMAGE_CHARS = 10 * 1024 * 1024
# How deep a body may nest (objects and lists). Far below what the JSON encoders refuse
# (orjson: 255), far above what the contract's shapes need (tool arguments sit at level 7).
MAX_NESTING = 64
NESTING_PATH_NAMES = 6
# Unicode categories refused in a nickname or a chat name: control (Cc) and invisible
# formatting (Cf: U+202E RIGHT-TO-LEFT OVERRIDE, U+200B ZERO WIDTH SPACE, ...).
NICKNAME_FORBIDDEN = {"Cc", "Cf"}
MAX_CHAT_NAME_CHARS = 100  # what a user may name a chat (titles and first messages: 60)
MAX_LIST_CHATS = 200
DEFAULT_LIST_CHATS = 50


@dataclass(frozen=True)
class Limits:
    """Size limits that come from the configuration."""

    system_prompt_chars: int
    messages: int
    message_chars: int
    prompt_chars: int
    options: OptionRules

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Limits":
        """Read the limits from the app configuration."""
        return cls(
            system_prompt_chars=int(config["MAX_SYSTEM_PROMPT_CHARS"]),
            messages=int(config["MAX_MESSAGES"]),
            message_chars=int(config["MAX_MESSAGE_CHARS"]),
            prompt_chars=int(config["MAX_PROMPT_CHARS"]),
            options=OptionRules.from_config(config),
        )


DEFAULT_LIMITS = Limits.from_config(vars(defaults))


class ModelName(fields.String):
    """A model name, as given: the catalog finds it (`echo` is `echo:latest` on Ollama)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            validate=[
                validate.Length(1, MAX_MODEL_NAME_CHARS),
                validate.Regexp(MODEL_NAME, error="Not a valid model name."),
            ],
            **kwargs,
        )


class ShownName(fields.String):
    """A name shown to people: trimmed, 1 to `max_chars` characters, no control or
    invisible characters."""

    max_chars = 32

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if not 1 <= len(text) <= self.max_chars:
            raise ValidationError(f"Must be 1 to {self.max_chars} characters after trimming.")
        if any(unicodedata.category(char) in NICKNAME_FORBIDDEN for char in text):
            raise ValidationError(
                "Must not contain control or invisible formatting characters (Cc, Cf)."
            )
        return text


class Nickname(ShownName):
    """The user's display name: 1 to 32 characters."""


class ChatName(ShownName):
    """A name the user gives a chat: 1 to 100 characters."""

    max_chars = MAX_CHAT_NAME_CHARS


class Cursor(fields.String):
    """A `next` cursor of /list-chats, given back as it came."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            decode_cursor(text)
        except BadCursor:
            raise ValidationError("Not a cursor this server gave (use `next`).") from None
        return text


class Options(fields.Dict):
    """Model options for the chat instance: the allowed sampling settings, within bounds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            keys=fields.String(validate=validate.Length(1, 64)),
            values=fields.Raw(allow_none=True),
            validate=validate.Length(max=MAX_OPTIONS),
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict:
        options = super()._deserialize(value, attr, data, **kwargs)
        rules = getattr(self.root, "limits", DEFAULT_LIMITS).options
        if problems := rules.problems(options):
            raise ValidationError({name: [reason] for name, reason in problems.items()})
        return options


def nested_too_deep(value: Any, limit: int) -> str | None:
    """The path ("options.a.0") of a container nested deeper than `limit` levels, or None."""
    stack: list[tuple[Any, int, tuple | None]] = [(value, 1, None)]
    while stack:  # iterative: a deep body must not exhaust the interpreter's stack
        item, depth, path = stack.pop()
        if depth > limit:
            names = []
            while path is not None:
                key, path = path
                names.append(str(key))
            names.reverse()  # the first few names say where; the rest would be noise
            return ".".join(names[:NESTING_PATH_NAMES]) + (
                "..." if len(names) > NESTING_PATH_NAMES else ""
            )
        children = item.items() if isinstance(item, dict) else enumerate(item)
        stack.extend(
            (child, depth + 1, (key, path))
            for key, child in children
            if isinstance(child, dict | list)
        )
    return None


class StrictSchema(Schema):
    """Reject unknown fields everywhere."""

    class Meta:
        unknown = RAISE


class LimitedSchema(StrictSchema):
    """A top-level body schema that checks sizes against configured limits."""

    token = fields.String(required=True)

    def __init__(self, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limits = limits or DEFAULT_LIMITS

    @pre_load
    def check_nesting(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and (path := nested_too_deep(data, MAX_NESTING)):
            raise ValidationError(f"Nested more than {MAX_NESTING} levels deep.", path)
        return data


class SampledSchema(LimitedSchema):
    """A body that asks a model for an answer: its options are checked and bounded."""

    options = Options()

    @post_load
    def bound_the_answer(self, data: dict, **kwargs: Any) -> dict:
        data["options"] = self.limits.options.for_upstream(data.get("options"))
        return data


class TokenOnlySchema(LimitedSchema):
    """`{"token"}`."""


class PromptDataSchema(StrictSchema):
    system = fields.String(required=True)


class SitePrefsSchema(StrictSchema):
    model = ModelName(required=True)


class PrefsSchema(StrictSchema):
    nickname = Nickname()
    prompt_data = fields.Nested(PromptDataSchema)
    site_prefs = fields.Nested(SitePrefsSchema)


class UpdateSettingsSchema(LimitedSchema):
    """`{"token", "prefs": {...}}`: a partial update of the user's preferences."""

    prefs = fields.Nested(PrefsSchema, required=True)

    @validates_schema
    def check_system_prompt(self, data: dict, **kwargs: Any) -> None:
        system = data["prefs"].get("prompt_data", {}).get("system", "")
        if len(system) > self.limits.system_prompt_chars:
            raise ValidationError(
                f"Longer than {self.limits.system_prompt_chars} characters.",
                "prefs.prompt_data.system",
            )


class ChatIdSchema(LimitedSchema):
    """`{"token", "chatId"}`."""

    chatId = fields.UUID(required=True)  # the contract spells it so


class ListChatsSchema(LimitedSchema):
    """`{"token", "before"?, "limit"?}`: a page of the user's chats."""

    before = Cursor(validate=validate.Length(max=200))
    limit = fields.Integer(
        validate=validate.Range(1, MAX_LIST_CHATS), load_default=DEFAULT_LIST_CHATS, strict=True
    )


class RenameChatSchema(ChatIdSchema):
    """`{"token", "chatId", "name"}`."""

    name = ChatName(required=True)


class DeleteAccountSchema(LimitedSchema):
    """`{"token", "confirm"}`: `confirm` must be the user's uuid (checked by the view)."""

    confirm = fields.String(required=True, validate=validate.Length(max=64))


MAX_SEQ = 10**9  # far past any answer's lines (RESUME_KEEP_LINES, the reply's limits)


class ResumeSchema(ChatIdSchema):
    """`{"token", "chatId", "from"}`: re-attach to the chat's answer from line `from` on."""

    start = fields.Integer(
        data_key="from",
        strict=True,
        load_default=0,
        validate=validate.Range(0, MAX_SEQ),
        metadata={"description": "The first line wanted (its `seq`); 0 redraws the answer."},
    )


class StrictBoolean(fields.Boolean):
    """true or false, nothing that merely looks like one ("yes", 1)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


class GenerateSchema(SampledSchema):
    """`/generate`: a completion, or fill-in-the-middle with a suffix."""

    prompt = fields.String(required=True)
    suffix = fields.String()
    model = ModelName()
    queue_updates = StrictBoolean()

    @validates_schema
    def check_sizes(self, data: dict, **kwargs: Any) -> None:
        limit = self.limits.prompt_chars
        for name in ("prompt", "suffix"):
            if len(data.get(name, "")) > limit:
                raise ValidationError(f"Longer than {limit} characters.", name)


class ToolFunctionSchema(StrictSchema):
    # Any name a model gave is saved and must come back: an empty one is answered
    # "unknown tool", never refused here.
    name = fields.String(required=True, validate=validate.Length(max=200))
    arguments = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True))
    index = fields.Integer()


class ToolCallSchema(StrictSchema):
    function = fields.Nested(ToolFunctionSchema, required=True)
    id = fields.String()
    type = fields.String()


class MessageSchema(StrictSchema):
    """A chat message as the client sends it, or as /get-chat gave it back.

    Every field the server saves is accepted here, within limits that what it saves
    keeps to (see `chatsite.streaming.limits`).
    """

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = fields.String(required=True)
    timestamp = fields.String(validate=validate.Length(max=64))
    tool_calls = fields.List(
        fields.Nested(ToolCallSchema), validate=validate.Length(max=MAX_TOOL_CALLS)
    )
    tool_name = fields.String(validate=validate.Length(max=200))
    thinking = fields.String()
    images = fields.List(
        fields.String(validate=validate.Length(max=MAX_IMAGE_CHARS)),
        validate=validate.Length(max=MAX_IMAGES),
    )
    incomplete = fields.Boolean()
    # What /get-chat marks on the answer still being produced; never saved.
    generating = fields.Boolean(load_only=True)

    @post_load
    def drop_generating(self, data: dict, **kwargs: Any) -> dict:
        data.pop("generating", None)
        return data


class ChatSchema(SampledSchema):
    """`/chat`: a conversation to continue, optionally saved to a chat file."""

    model = ModelName()
    messages = fields.List(fields.Nested(MessageSchema), required=True)
    system = fields.String()
    chatfile = fields.UUID()
    think = StrictBoolean()
    queue_updates = StrictBoolean()

    @validates_schema
    def check_sizes(self, data: dict, **kwargs: Any) -> None:
        messages = data.get("messages", [])
        if not messages:
            raise ValidationError("Must hold at least one message.", "messages")
        if len(messages) > self.limits.messages:
            raise ValidationError(f"At most {self.limits.messages} messages.", "messages")
        limit = self.limits.message_chars
        for index, message in enumerate(messages):
            for text in ("content", "thinking"):
                if len(message.get(text, "")) > limit:
                    raise ValidationError(
                        f"Longer than {limit} characters.", f"messages.{index}.{text}"
                    )
        if len(data.get("system", "")) > self.limits.system_prompt_chars:
            raise ValidationError(
                f"Longer than {self.limits.system_prompt_chars} characters.", "system"
            )
