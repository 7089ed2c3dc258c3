"""Tables: users, their chats' records, and the chats' transcripts when kept in the database."""

import datetime
import logging

from peewee import SQL, CharField, DateTimeField, ForeignKeyField, IntegerField, TextField
from playhouse.migrate import SchemaMigrator, migrate

from ..clock import utc_now
from .database import BaseModel, db

log = logging.getLogger(__name__)


def stored_now() -> datetime.datetime:
    """The clock's time as the tables keep it: naive UTC, the same on every database engine."""
    return utc_now().replace(tzinfo=None)


class User(BaseModel):
    """A signed-in user; `uuid` is the JWT's `sub`."""

    uuid = CharField(primary_key=True, max_length=36)
    nickname = CharField(max_length=32, default="")
    system_prompt = TextField(default="")
    preferred_model = CharField(max_length=200, default="")
    created_at = DateTimeField(default=stored_now)
    updated_at = DateTimeField(default=stored_now)

    class Meta:
        table_name = "users"


class Chat(BaseModel):
    """The record of one user's chat: its name and dates; its messages are its transcript."""

    id = CharField(primary_key=True, max_length=36)
    owner = ForeignKeyField(User, backref="chats", on_delete="CASCADE", column_name="owner_uuid")
    name = CharField(max_length=200)
    created_at = DateTimeField(default=stored_now)
    updated_at = DateTimeField(default=stored_now)
    message_count = IntegerField(default=0)
    # What its transcript takes in the store, counted against MAX_STORAGE_PER_USER. The SQL
    # default lets `init-db` add the column to an older database in place (0: not counted
    # yet; an empty chat takes 2 bytes, "[]", so a saved chat is never 0).
    transcript_bytes = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])

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


def create_tables() -> list[str]:
    """Create every table that is missing and add the columns older databases lack.

    Idempotent; returns the columns it added ("table.column").
    """
    with db.connection_context():
        db.create_tables(ALL_TABLES, safe=True)
        return add_missing_columns()


def add_missing_columns() -> list[str]:
    """Add, in place, every column a table of an older database lacks."""
    migrator = SchemaMigrator.from_database(db)
    added = []
    for table in ALL_TABLES:
        name = table._meta.table_name
        present = {column.name for column in db.get_columns(name)}
        for field in table._meta.sorted_fields:
            if field.column_name not in present:
                # Every such field carries an SQL default: one ALTER TABLE, no table rebuild.
                migrate(migrator.add_column(name, field.column_name, field, allow_not_null=True))
                added.append(f"{name}.{field.column_name}")
                log.info("added column %s.%s", name, field.column_name)
    return added
