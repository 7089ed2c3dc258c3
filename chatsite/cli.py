"""Operator commands: `flask --app chatsite init-db`, `issue-token`, `cleanup`."""

import click
import peewee
from flask import Flask, current_app
from flask.cli import with_appcontext

from .auth import ConfigError
from .ids import canonical_uuid
from .site import current_site
from .storage.chats import count_unsized_chats
from .storage.cleanup import clean_up
from .storage.database import database_connection
from .storage.search_index import index_unindexed_chats
from .storage.tables import create_tables


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database tables, rename old ones, add missing columns (safe to run again)."""
    try:
        changes = create_tables()
        with database_connection():
            counted = count_unsized_chats(current_site().transcripts)
            indexed = index_unindexed_chats(current_site().transcripts)
    except peewee.DatabaseError as error:
        raise click.ClickException(f"cannot set up the database: {error}") from None
    for change in changes:
        click.echo(change)
    if counted:
        click.echo(f"recorded the size of {counted} chats saved before sizes were kept")
    if indexed:
        click.echo(f"indexed {indexed} chats for search")
    click.echo(f"database ready: {current_app.config['DATABASE_URL'].split('@')[-1]}")


@click.command("issue-token")
@click.argument("user_uuid")
@click.option(
    "--expires",
    default=3600,
    show_default=True,
    type=click.IntRange(1, 10 * 365 * 86400),
    help="Seconds until the token expires.",
)
@with_appcontext
def issue_token_command(user_uuid: str, expires: int) -> None:
    """Print a JWT for USER_UUID signed with the configured HS secret."""
    try:
        subject = canonical_uuid(user_uuid)
    except ValueError:
        raise click.BadParameter("must be a uuid", param_hint="USER_UUID") from None
    try:
        token = current_site().tokens.issue(subject, expires)
    except ConfigError as error:  # an RS*/ES* site verifies tokens but holds no key to sign
        raise click.ClickException(str(error)) from None
    click.echo(token)


@click.command("cleanup")
@with_appcontext
def cleanup_command() -> None:
    """Remove chat transcripts that no chat lists (left by a crash mid-delete); idempotent."""
    try:
        with database_connection():
            cleaned = clean_up(current_site().transcripts)
    except peewee.DatabaseError as error:
        raise click.ClickException(f"cannot clean up: {error}") from None
    click.echo(
        f"removed {cleaned.files} chat files and {cleaned.rows} transcript rows that no chat "
        f"lists, {cleaned.folders} empty folders of deleted users, "
        f"{cleaned.temp_files} stale temp files"
    )


def init_app(app: Flask) -> None:
    """Register the operator commands."""
    app.cli.add_command(init_db_command)
    app.cli.add_command(issue_token_command)
    app.cli.add_command(cleanup_command)
