"""Tables: users, their chats' records, and the chats' transcripts when kept in the database."""

import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, TextField

from .database import BaseModel, db


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


class Chat(BaseModel):
    """The record of one user's chat: its name and dates; its messages are its transcript."""

    id = CharField(primary_key=True, max_length=36)
    owner = ForeignKeyField(User, backref="chats", on_delete="CASCADE", column_name="owner_uuid")
    name = CharField(max_length=200)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    message_count = IntegerField(default=0)

    class Meta:
        table_name = "chat_files"  # the name it had when every transcript was a file
        indexes = ((("owner", "updated_at"), False),)

    @classmethod
    def newest_first(cls, owner: str, *fields):
        """Select the owner's chats, most recently updated first."""
        return (
            cls.select(*fields)
            .where(cls.owner == owner)
            .order_by(cls.updated_at.desc(), cls.created_at.desc(), cls.id)
        )


class ChatTranscript(BaseModel):
    """A chat's messages as JSON, for the `database` transcript store shared across hosts."""

    chat = ForeignKeyField(Chat, primary_key=True, on_delete="CASCADE", column_name="chat_id")
    messages = TextField(default="[]")

    class Meta:
        table_name = "chat_contents"


ALL_TABLES = [User, Chat, ChatTranscript]


def create_tables() -> None:
    """Create every table that is missing (idempotent)."""
    with db.connection_context():
        db.create_tables(ALL_TABLES, safe=True)
