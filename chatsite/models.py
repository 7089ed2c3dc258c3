"""Tables: users and the metadata of their chats."""

import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, TextField

from .db import BaseModel


def utcnow() -> datetime.datetime:
    """Naive UTC time, the same on every database engine."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class User(BaseModel):
    """A signed-in user; `uuid` is the JWT's `sub`."""

    uuid = CharField(primary_key=True, max_length=36)
    nickname = CharField(max_length=32, default="")
    system_prompt = TextField(default="")
    preferred_model = CharField(max_length=200, default="")
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "users"


class ChatFile(BaseModel):
    """A chat owned by one user; its messages live in the chat store."""

    id = CharField(primary_key=True, max_length=36)
    owner = ForeignKeyField(User, backref="chats", on_delete="CASCADE", column_name="owner_uuid")
    name = CharField(max_length=200)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    message_count = IntegerField(default=0)

    class Meta:
        table_name = "chat_files"
        indexes = ((("owner", "updated_at"), False),)


class ChatContent(BaseModel):
    """A chat's messages as JSON, for the `database` chat store shared across hosts."""

    chat = ForeignKeyField(ChatFile, primary_key=True, on_delete="CASCADE", column_name="chat_id")
    messages = TextField(default="[]")

    class Meta:
        table_name = "chat_contents"


ALL_MODELS = [User, ChatFile, ChatContent]
