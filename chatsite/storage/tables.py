"""Tables: users, their chats' records, and the chats' transcripts when kept in the database."""

import datetime
import logging

import peewee
from peewee import SQL, CharField, DateTimeField, ForeignKeyField, IntegerField, TextField
from playhouse.migrate import SchemaMigrator, migrate

from ..clock import utc_now
from .database import BaseModel, db
from .search_schema import create_search_index

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
    # Who gave the chat its name: "new" (none yet), "message" (its first user message),
    # "title" (TITLE_MODEL) or "user" (/rename-chat: never overwritten).
    named_by = CharField(max_length=8, default="new", constraints=[SQL("DEFAULT 'new'")])

    class Meta:
        table_name = "chats"  # "chat_files" before transcripts could live in the database
        indexes = ((("owner", "updated_at"), False),)

    @classmethod
    def newest_first(cls, owner: str, *fields):
        """Select the owner's chats, most recently updated first (ties: the larger id).

        (updated_at, id) is unique: the order that /list-chats pages through by keyset.
        """
        return (
            cls.select(*fields)
            .where(cls.owner == owner)
            .order_by(cls.updated_at.desc(), cls.id.desc())
        )


class ChatTranscript(BaseModel):
    """A chat's messages as JSON, for the `database` transcript store shared across hosts."""

    chat = ForeignKeyField(Chat, primary_key=True, on_delete="CASCADE", column_name="chat_id")
    messages = TextField(default="[]")

    class Meta:
        table_name = "chat_contents"


ALL_TABLES = [User, Chat, ChatTranscript]
# Tables an older database has under another name: (old name, table).
RENAMED_TABLES = [("chat_files", Chat)]


class SchemaConflict(peewee.DatabaseError):
    """The database holds a table under both its old and its new name."""


def create_tables() -> list[str]:
    """Bring the database up to date: rename old tables, create missing ones, add columns.

    Idempotent; returns what it changed ("renamed table a to b", "added column t.c").
    """
    with db.connection_context():
        changes = rename_old_tables()
        db.create_tables(ALL_TABLES, safe=True)
        changes += [f"added column {column}" for column in add_missing_columns()]
        create_search_index(Chat._meta.table_name)
        return changes


def rename_old_tables() -> list[str]:
    """Give the tables of an older database their current names, in place, keeping rows.

    Indexes keep their names (Peewee names them after the model, not the table); on
    PostgreSQL the table's own constraints are renamed too, as a new table would name them.
    """
    present = set(db.get_tables())
    migrator = SchemaMigrator.from_database(db)
    renamed = []
    for old, table in RENAMED_TABLES:
        new = table._meta.table_name
        if old not in present:
            continue
        if new in present:
            raise SchemaConflict(f"both {old} and {new} exist: keep one of them by hand")
        with db.atomic():
            migrate(migrator.rename_table(old, new))
            if isinstance(db.obj, peewee.PostgresqlDatabase):
                _rename_constraints(new, old)
        renamed.append(f"renamed table {old} to {new}")
        log.info("renamed table %s to %s", old, new)
    return renamed


def _rename_constraints(table: str, old_prefix: str) -> None:
    """PostgreSQL: rename `<old>_pkey` and the like after the table's new name."""
    names = db.execute_sql(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass", (table,)
    ).fetchall()
    for (name,) in names:
        if name.startswith(f"{old_prefix}_"):
            new_name = table + name[len(old_prefix) :]
            db.execute_sql(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{name}" TO "{new_name}"')


def add_missing_columns() -> list[str]:
    """Add, in place, every column a table of an older database lacks ("table.column")."""
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
