"""Operator commands: `flask --app chatsite issue-token USER_UUID`."""

import uuid

import click
from flask import Flask, current_app

from .site import Site


@click.command("issue-token")
@click.argument("user_uuid")
@click.option(
    "--expires",
    default=3600,
    show_default=True,
    type=click.IntRange(1, 10 * 365 * 86400),
    help="Seconds until the token expires.",
)
def issue_token_command(user_uuid: str, expires: int) -> None:
    """Print a JWT for USER_UUID signed with the configured HS secret."""
    try:
        subject = str(uuid.UUID(user_uuid))
    except ValueError:
        raise click.BadParameter("must be a uuid", param_hint="USER_UUID") from None
    site: Site = current_app.extensions["chatsite"]
    click.echo(site.tokens.issue(subject, expires))


def init_app(app: Flask) -> None:
    """Register the operator commands."""
    app.cli.add_command(issue_token_command)
