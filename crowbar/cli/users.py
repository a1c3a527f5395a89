"""`crowbar users ...`, `crowbar tokens ...` and `crowbar whoami`: accounts, roles and API tokens.

A token's secret is printed once, when it is created or rotated (the server keeps only its hash):
the table shows it on a line of its own, `-o json` in the `token` field. Like crowbar.cli.power,
these commands get the shared Context through click's `pass_obj`.
"""

from __future__ import annotations

import re

import click

from crowbar.cli.client import seg
from crowbar.cli.output import confirm, confirm_option, emit_list, emit_object, limit_option, output_option, table_options

USER_COLUMNS = ["id", "name", "role", "description", "created_at"]
TOKEN_COLUMNS = ["id", "user", "name", "expires_at", "expired", "rotated_at", "created_at"]
ROLES = ["viewer", "operator", "admin"]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Expiry(click.ParamType):
    """How long a token lives: 90d, 12h, 30m, 3600s (or a plain number of seconds), or `never`."""

    name = "duration"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "never":
            return None
        match = re.fullmatch(r"(\d{1,12})([smhd]?)", text)
        if not match:
            self.fail(f"{value!r} is not a duration (like 90d, 12h, 30m, 3600s) nor 'never'", param, ctx)
        return int(match.group(1)) * UNITS[match.group(2) or "s"]


EXPIRY = click.option("--expires", "expires", type=Expiry(), default="90d", show_default=True,
                      help="how long the token is valid: 90d, 12h, 30m or never")


def _emit_token(token: dict, output: str) -> None:
    if output == "json":
        emit_object(token, output)
        return
    secret = token.pop("token", None)
    emit_object(token, output)
    if secret:
        click.echo(f"token: {secret}")
        click.echo("(shown once: the server keeps only its hash; give it as CROWBAR_TOKEN)", err=True)


@click.group("users")
def users() -> None:
    """Accounts and their roles: viewer (reads), operator (changes), admin (users). Admins only."""


@users.command("list")
@table_options
@click.option("--role", type=click.Choice(ROLES), help="only users with this role")
@limit_option
@output_option
@click.pass_obj
def users_list(ctx, role: str | None, limit: int | None, output: str) -> None:
    emit_list(ctx.api.list_all("/users", limit=limit, role=role), USER_COLUMNS, output)


@users.command("show")
@click.argument("user")
@output_option
@click.pass_obj
def users_show(ctx, user: str, output: str) -> None:
    emit_object(ctx.api.get(f"/users/{seg(user)}"), output)


@users.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--description", default="")
@click.option("--token", "token_name", metavar="NAME", help="also create a token of this name for the user")
@EXPIRY
@output_option
@click.pass_obj
def users_create(ctx, name: str, role: str, description: str, token_name: str | None, expires, output: str) -> None:
    """Create a user (and with --token, its first token, printed once)."""
    user = ctx.api.post("/users", {"name": name, "role": role, "description": description})
    if token_name is None:
        emit_object(user, output)
        return
    token = ctx.api.post("/tokens", {"name": token_name, "user": user["name"], "expires_in": expires})
    if output == "json":
        emit_object({**user, "token": token}, output)
        return
    emit_object(user, output)
    _emit_token(token, output)


@users.command("set-role")
@click.argument("user")
@click.argument("role", type=click.Choice(ROLES))
@output_option
@click.pass_obj
def users_set_role(ctx, user: str, role: str, output: str) -> None:
    emit_object(ctx.api.patch(f"/users/{seg(user)}", {"role": role}), output)


@users.command("delete")
@click.argument("user")
@confirm_option
@output_option
@click.pass_obj
def users_delete(ctx, user: str, yes: bool, output: str) -> None:
    """Delete a user and every token it has."""
    confirm(f"delete user {user!r} and all its tokens?", yes)
    emit_object(ctx.api.delete(f"/users/{seg(user)}"), output)


@click.group("tokens")
def tokens() -> None:
    """API tokens: your own; an admin's, everyone's (--user)."""


@tokens.command("list")
@table_options
@click.option("--user", help="this user's tokens (another user's: admins only)")
@limit_option
@output_option
@click.pass_obj
def tokens_list(ctx, user: str | None, limit: int | None, output: str) -> None:
    emit_list(ctx.api.list_all("/tokens", limit=limit, user=user), TOKEN_COLUMNS, output)


@tokens.command("create")
@click.argument("name")
@click.option("--user", help="for this user (default: yourself; another user: admins only)")
@EXPIRY
@output_option
@click.pass_obj
def tokens_create(ctx, name: str, user: str | None, expires, output: str) -> None:
    """Create a token; its secret is printed once."""
    body = {"name": name, "expires_in": expires} | ({"user": user} if user else {})
    _emit_token(ctx.api.post("/tokens", body), output)


@tokens.command("rotate")
@click.argument("token_id", metavar="ID")
@EXPIRY
@output_option
@click.pass_obj
def tokens_rotate(ctx, token_id: str, expires, output: str) -> None:
    """A new secret for a token (printed once); the old one stops working at once."""
    _emit_token(ctx.api.post(f"/tokens/{seg(token_id)}/rotate", {"expires_in": expires}), output)


@tokens.command("revoke")
@click.argument("token_id", metavar="ID")
@confirm_option
@output_option
@click.pass_obj
def tokens_revoke(ctx, token_id: str, yes: bool, output: str) -> None:
    confirm(f"revoke token {token_id}? whatever uses it stops working", yes)
    emit_object(ctx.api.delete(f"/tokens/{seg(token_id)}"), output)


@click.command("whoami")
@output_option
@click.pass_obj
def whoami(ctx, output: str) -> None:
    """The user your token speaks for, and its role."""
    me = ctx.api.get("/whoami")
    if output == "json":
        emit_object(me, output)
        return
    token = me.get("token") or {}
    emit_object({"user": me["user"], "role": me["role"], "token": token.get("name"),
                 "expires_at": token.get("expires_at") or "never"}, output)


COMMANDS = (users, tokens, whoami)
